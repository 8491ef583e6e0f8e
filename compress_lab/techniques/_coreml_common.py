"""What every post-training technique shares: the common config fields, the weight
layers of a program, per-op overrides -> coremltools OptimizationConfig, the
divisibility checks coremltools would otherwise turn into silently skipped layers
and the handler that loads, applies the steps and saves.

A technique config lists its steps (prune, palettize, quantize; joint techniques
have two). Each step turns a single-technique config into an OpCompressorConfig,
knows which layers it cannot compress, and applies an OptimizationConfig."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from compress_lab.errors import ConfigError
from compress_lab.mil import input_vars, is_constexpr, iter_ops
from compress_lab.quiet import quiet_coremltools
from compress_lab.techniques.base import CompressContext, CompressOutcome, DataNeed, TechniqueConfig

TYPE_PREFIX = "type:"
SKIP = "skip"
# Fields that configure the whole run, not one op: not allowed inside an op override.
RUN_FIELDS = ("precision", "op_overrides", "skip_indivisible")


@dataclass(frozen=True)
class PostTrainingConfig(TechniqueConfig):
    """Fields common to every post-training technique.

    op_overrides maps an op name (a weight const or the conv/linear/... op using it)
    or "type:conv" / "type:linear" / ... to "skip" or to a dict of this technique's
    settings for that op (e.g. {"nbits": 8})."""

    family: ClassVar[str] = "post_training"
    data_need: ClassVar[DataNeed] = DataNeed.NONE

    precision: Literal["fp16", "fp32"] = "fp16"
    weight_threshold: int = 2048
    op_overrides: dict = field(default_factory=dict)
    skip_indivisible: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "fp32"):
            self._fail("precision", self.precision, "use one of ['fp16', 'fp32']")
        if isinstance(self.weight_threshold, bool) or not isinstance(self.weight_threshold, int) or self.weight_threshold < 0:
            self._fail("weight_threshold", self.weight_threshold,
                       "must be an integer >= 0 (weights with more elements than this are compressed)")
        self.validate()
        self._validate_overrides()

    # ---- hooks for subclasses
    def validate(self) -> None:
        """Check this technique's own fields; raise via self._fail."""

    def steps(self) -> list[tuple["Step", TechniqueConfig]]:
        """The steps to apply, in order, each with the single-technique config it applies."""
        raise NotImplementedError

    # ---- helpers
    def _fail(self, key: str, value: Any, hint: str) -> None:
        raise ConfigError(f"technique {self.name!r}: {key}={value!r} {hint}")

    def settings_fields(self) -> list[str]:
        """The settings an op override may change."""
        return [f.name for f in dataclasses.fields(self) if f.name not in RUN_FIELDS]

    def for_op(self, settings: dict) -> "PostTrainingConfig":
        """This config with an op override's settings applied (validated like any config)."""
        return dataclasses.replace(self, op_overrides={}, **settings)

    def _validate_overrides(self) -> None:
        if not isinstance(self.op_overrides, dict):
            self._fail("op_overrides", self.op_overrides, "must be a table mapping op names or 'type:OPTYPE' to 'skip' or a table of settings")
        allowed = self.settings_fields()
        for key, value in self.op_overrides.items():
            if not isinstance(key, str) or not key or key == TYPE_PREFIX:
                self._fail("op_overrides", key, "keys must be op names or 'type:OPTYPE' (e.g. 'type:conv')")
            if value == SKIP or value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"technique {self.name!r}: op_overrides[{key!r}] = {value!r} must be 'skip' or a table of settings")
            unknown = sorted(set(value) - set(allowed))
            if unknown:
                raise ConfigError(f"technique {self.name!r}: op_overrides[{key!r}] has unknown setting(s) {unknown}; allowed: {allowed}")
            try:
                self.for_op(value)
            except ConfigError as e:
                raise ConfigError(f"op_overrides[{key!r}]: {e}") from None


# --------------------------------------------------------------------------- steps

@dataclass(frozen=True)
class Step:
    """One coremltools compression pass."""

    kind: str
    op_config: Callable[[Any], Any]                       # single config -> OpCompressorConfig
    problem: Callable[["WeightLayer", Any], str | None]   # why a layer cannot take this config
    apply: Callable[[Any, Any, bool, Any], Any]           # (mlmodel, OptimizationConfig, joint, global single config)
    only_compressed: bool = False  # as a later step: touch only weights an earlier step compressed


@dataclass(frozen=True)
class WeightLayer:
    """A float weight const and the ops that use it."""

    const: str
    consumers: tuple[tuple[str, str], ...]  # (op name, op type)
    shape: tuple[int, ...]
    output_axis: int | None
    input_axis: int | None
    groups: int

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    def label(self) -> str:
        users = ", ".join(f"{t} {n!r}" for n, t in self.consumers)
        return f"{self.const!r} {list(self.shape)} (used by {users})"


def load_program(mlmodel):
    """The MIL program of an MLModel loaded from disk (its `_mil_program` is None)."""
    from coremltools.converters.mil.frontend.milproto.load import load
    from compress_lab.quiet import MIL_LOCK
    spec = mlmodel.get_spec()
    with MIL_LOCK:
        return load(spec, spec.specificationVersion, mlmodel.weights_dir or "")


def weight_layers(prog) -> list[WeightLayer]:
    """Float consts of rank >= 2 that feed compute ops: the tensors coremltools may compress."""
    from coremltools.converters.mil.mil import types
    layers = []
    for op in iter_ops(prog):
        if op.op_type != "const":
            continue
        var = op.outputs[0]
        if not types.is_tensor(var.sym_type) or not types.is_float(var.dtype) or var.rank < 2:
            continue
        consumers = tuple((c.name, c.op_type) for c in var.child_ops)
        if not consumers:
            continue
        out_axis, in_axis = _channel_axes(var)
        groups = 1
        for child in var.child_ops:
            g = getattr(child, "groups", None)
            if g is not None and g.val is not None and int(g.val) > 1:
                groups = int(g.val)
        layers.append(WeightLayer(op.name, consumers, tuple(int(d) for d in var.shape), out_axis, in_axis, groups))
    return layers


def _channel_axes(var) -> tuple[int | None, int | None]:
    from coremltools.optimize import _utils as optimize_utils
    with quiet_coremltools():
        in_axis, out_axis = optimize_utils.select_input_output_channel_axis(var.op)
    return out_axis, in_axis


# --------------------------------------------------------------------------- overrides

@dataclass
class OverridePlan:
    """Per-op configs resolved against a program, keyed by the name of the op using the
    weight (stable across joint steps, unlike const names): name -> config (None = skip),
    op type -> config."""

    by_name: dict[str, Any]
    by_type: dict[str, Any]

    def config_for(self, layer: WeightLayer, global_config):
        """The config coremltools will use for `layer`: name beats type beats global."""
        name, op_type = layer.consumers[0]
        if name in self.by_name:
            return self.by_name[name]
        if op_type in self.by_type:
            return self.by_type[op_type]
        return global_config


def resolve_overrides(config: PostTrainingConfig, layers: list[WeightLayer], all_op_names: set[str]) -> OverridePlan:
    """Turn config.op_overrides into per-op configs; unknown op names are a ConfigError.
    A weight const's name stands for the ops that use it."""
    by_name: dict[str, Any] = {}
    by_type: dict[str, Any] = {}
    users_of = {l.const: [n for n, _ in l.consumers] for l in layers}
    users_of.update({n: [n] for l in layers for n, _ in l.consumers})
    # const names first, so that an override naming the op itself wins
    keys = sorted(config.op_overrides, key=lambda k: (k.startswith(TYPE_PREFIX), k not in {l.const for l in layers}))
    for key in keys:
        value = config.op_overrides[key]
        op_config = None if value in (SKIP, None) else config.for_op(value)
        if key.startswith(TYPE_PREFIX):
            by_type[key[len(TYPE_PREFIX):]] = op_config
            continue
        if key not in all_op_names:
            examples = sorted({n for l in layers for n, _ in l.consumers})[:6]
            raise ConfigError(
                f"technique {config.name!r}: op_overrides names op {key!r}, which is not in this model. "
                f"Ops with weights include: {', '.join(repr(e) for e in examples)}; or use 'type:conv' / 'type:linear'.")
        if key not in users_of:
            raise ConfigError(f"technique {config.name!r}: op_overrides names op {key!r}, which has no weight to compress")
        for user in users_of[key]:
            by_name[user] = op_config
    return OverridePlan(by_name, by_type)


def all_op_names(prog) -> set[str]:
    return {op.name for op in iter_ops(prog)}


def step_plan(config: PostTrainingConfig, plan: OverridePlan, index: int) -> tuple[Any, OverridePlan]:
    """The single-technique configs of step `index`: the global one and the per-op ones."""
    def part(c):
        return None if c is None else c.steps()[index][1]
    return part(config), OverridePlan({k: part(v) for k, v in plan.by_name.items()},
                                      {k: part(v) for k, v in plan.by_type.items()})


def optimization_config(step: Step, global_part, plan: OverridePlan, skip_ops: set[str]):
    import coremltools.optimize.coreml as cto

    def make(c):
        return None if c is None else step.op_config(c)
    by_name = {k: make(v) for k, v in plan.by_name.items()}
    by_name.update({name: None for name in skip_ops})
    return cto.OptimizationConfig(global_config=make(global_part), op_type_configs={k: make(v) for k, v in plan.by_type.items()},
                                  op_name_configs=by_name)


def indivisible_layers(step: Step, global_part, plan: OverridePlan, layers: list[WeightLayer],
                       weight_threshold: int) -> dict[str, str]:
    """Layers this step would compress but cannot (a size that does not divide their channels): const -> reason."""
    problems = {}
    for layer in layers:
        part = plan.config_for(layer, global_part)
        if part is None:
            continue
        threshold = part.weight_threshold if getattr(part, "weight_threshold", None) is not None else weight_threshold
        if layer.size <= threshold:
            continue
        reason = step.problem(layer, part)
        if reason:
            problems[layer.const] = reason
    return problems


def raise_indivisible(config: PostTrainingConfig, step: Step, problems: dict[str, str], layers: list[WeightLayer]) -> None:
    by_const = {l.const: l for l in layers}
    lines = [f"{by_const[c].label()}: {why}" for c, why in list(problems.items())[:5]]
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise ConfigError(
        f"technique {config.name!r} ({step.kind} step) cannot compress {len(problems)} layer(s){more}: " + "; ".join(lines)
        + ". Fix: choose a size that divides these channels, give those ops an override in op_overrides "
          "(e.g. {\"<op>\": \"skip\"}), or set skip_indivisible=true to leave them uncompressed.")


def compressed_users(mlmodel) -> set[str]:
    """Names of the ops whose weight is already compressed (fed by a constexpr op)."""
    prog = getattr(mlmodel, "_mil_program", None) or load_program(mlmodel)
    return {op.name for op in iter_ops(prog)
            if not is_constexpr(op) and op.op_type != "const"
            and any(v.op is not None and is_constexpr(v.op) for v in input_vars(op))}


# --------------------------------------------------------------------------- handler

def run_post_training(config: PostTrainingConfig, ctx: CompressContext, out_path: Path, *,
                      before_steps: Callable[[Any], Any] | None = None) -> CompressOutcome:
    """Load the float package, apply the config's steps, save. Never touches the source package.

    `before_steps(mlmodel) -> mlmodel` runs on the float model before the weight steps
    (activation quantization); the weight layers and op names are those of the float model."""
    import coremltools as ct
    from compress_lab.models.convert import save_mlmodel
    from compress_lab.techniques.base import Progress

    timings: dict[str, float] = {}
    started = time.perf_counter()
    source = ctx.float_package(config.precision)
    timings["float_s"] = time.perf_counter() - started
    from compress_lab.quiet import MIL_LOCK

    messages: list[str] = []
    with quiet_coremltools(messages), MIL_LOCK:
        t = time.perf_counter()
        mlmodel = ct.models.MLModel(str(source), skip_model_load=True)
        prog = load_program(mlmodel)
        layers = weight_layers(prog)
        plan = resolve_overrides(config, layers, all_op_names(prog))
        steps = config.steps()
        parts = [step_plan(config, plan, i) for i in range(len(steps))]
        skipped: dict[str, str] = {}
        for (step, _), (global_part, step_overrides) in zip(steps, parts):
            problems = indivisible_layers(step, global_part, step_overrides, layers, config.weight_threshold)
            if problems and not config.skip_indivisible:
                raise_indivisible(config, step, problems, layers)
            skipped.update({c: f"{step.kind}: {why}" for c, why in problems.items()})
        # a layer one step cannot take is left alone by every step
        skip_users = {n for l in layers if l.const in skipped for n, _ in l.consumers}
        timings["load_s"] = time.perf_counter() - t

        if before_steps is not None:
            ctx.check_cancelled()
            mlmodel = before_steps(mlmodel)
        t = time.perf_counter()
        applied = []
        for i, ((step, _), (global_part, step_overrides)) in enumerate(zip(steps, parts)):
            ctx.check_cancelled()
            ctx.report(Progress("compress", i, len(steps), step.kind, elapsed_s=time.perf_counter() - t))
            skip_now = set(skip_users)
            if i > 0 and step.only_compressed:
                done = compressed_users(mlmodel)
                skip_now |= {n for l in layers for n, _ in l.consumers if n not in done}
            opt_config = optimization_config(step, global_part, step_overrides, skip_now)
            try:
                mlmodel = step.apply(mlmodel, opt_config, i > 0, global_part)
            except ConfigError:
                raise
            except (ValueError, NotImplementedError, IndexError) as e:
                raise ConfigError(f"technique {config.name!r} ({step.kind} step): coremltools refused the settings "
                                  f"{config.label()!r}: {type(e).__name__}: {e}") from e
            applied.append({"kind": step.kind, "optimization_config": describe_optimization_config(opt_config)})
        ctx.report(Progress("compress", len(steps), len(steps), "done", elapsed_s=time.perf_counter() - t))
        timings["compress_s"] = time.perf_counter() - t

        t = time.perf_counter()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        save_mlmodel(mlmodel, out_path)
        timings["save_s"] = time.perf_counter() - t
    details = {
        "source": str(source),
        "steps": applied,
        "skipped_ops": skipped,
        "coremltools_warnings": _dedupe(messages)[:50],
    }
    return CompressOutcome(path=out_path, timings=timings, details=details)


def describe_optimization_config(opt_config) -> dict[str, Any]:
    """A plain-data view of an OptimizationConfig (for CompressOutcome.details)."""
    return {"global_config": describe_op_config(opt_config.global_config),
            "op_type_configs": {k: describe_op_config(v) for k, v in opt_config.op_type_configs.items()},
            "op_name_configs": {k: describe_op_config(v) for k, v in opt_config.op_name_configs.items()}}


def describe_op_config(op_config) -> dict[str, Any] | None:
    import enum

    import attrs
    from coremltools.converters.mil.mil import types
    if op_config is None:
        return None
    out: dict[str, Any] = {"config_type": type(op_config).__name__}
    for a in attrs.fields(type(op_config)):
        if a.name.startswith("_"):
            continue
        value = getattr(op_config, a.name)
        if a.name == "dtype":
            value = types.builtin_to_string(value)
        elif isinstance(value, enum.Enum):
            value = value.name.lower()
        elif isinstance(value, tuple):
            value = list(value)
        elif callable(value):
            continue
        out[a.name] = value
    return out


def _dedupe(items: list[str]) -> list[str]:
    seen, out = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def positive_or_none(config: PostTrainingConfig, key: str, value: int | None, *, minimum: int = 1) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        config._fail(key, value, f"must be an integer >= {minimum}")


def one_of(config: PostTrainingConfig, key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        config._fail(key, value, f"is not allowed; use one of {list(allowed)}")
