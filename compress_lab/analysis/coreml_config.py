"""The chosen assignment as a coremltools optimization config: the `OptimizationConfig`
dict (or YAML) with `op_name_configs` that a user applies in their own pipeline with
`ct.optimize.coreml.palettize_weights` / `linear_quantize_weights` / `prune_weights`.

It is exported from what the lab applied (CompressOutcome.details), not re-derived, so
applying it to the same float package gives the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress_lab.errors import ConfigError

APPLY_FUNCTIONS = {"OpPalettizerConfig": "palettize_weights", "OpLinearQuantizerConfig": "linear_quantize_weights",
                   "OpMagnitudePrunerConfig": "prune_weights", "OpThresholdPrunerConfig": "prune_weights"}
# settings of coremltools' op configs that from_dict does not take back (callables, derived values)
NOT_CONFIGURABLE = ("op_selector",)


def _op_settings(described: dict[str, Any] | None, config_type: str) -> dict[str, Any] | None:
    if described is None:
        return None
    # None is each such setting's default (and from_dict refuses lut_function even as None)
    out = {k: v for k, v in described.items()
           if k not in NOT_CONFIGURABLE and k != "config_type" and v is not None}
    if described.get("config_type", config_type) != config_type:
        out["config_type"] = described["config_type"]
    return out


def optimization_config_dict(details: dict[str, Any]) -> dict[str, Any]:
    """The OptimizationConfig dict (coremltools' `OptimizationConfig.from_dict` format) of a
    one-step post-training run, from its CompressOutcome.details."""
    steps = details.get("steps") or []
    if len(steps) != 1:
        raise ConfigError(f"a coremltools optimization config describes one compression step; this run has "
                          f"{len(steps)} ({[s.get('kind') for s in steps]}): export each step's config on its own")
    applied = steps[0]["optimization_config"]
    described = [applied.get("global_config"), *applied.get("op_name_configs", {}).values(),
                 *applied.get("op_type_configs", {}).values()]
    types = [d["config_type"] for d in described if d]
    if not types:
        raise ConfigError("this run compressed no op, so there is no optimization config to export")
    config_type = (applied.get("global_config") or {}).get("config_type") or types[0]
    out: dict[str, Any] = {"config_type": config_type,
                           "global_config": _op_settings(applied.get("global_config"), config_type)}
    if applied.get("op_type_configs"):
        out["op_type_configs"] = {k: _op_settings(v, config_type) for k, v in applied["op_type_configs"].items()}
    out["op_name_configs"] = {k: _op_settings(v, config_type) for k, v in sorted(applied.get("op_name_configs", {}).items())}
    return out


def apply_function(config_dict: dict[str, Any]) -> str:
    """The ct.optimize.coreml function that applies this config, e.g. 'palettize_weights'."""
    return APPLY_FUNCTIONS[config_dict["config_type"]]


def to_yaml(config_dict: dict[str, Any]) -> str:
    import yaml
    return yaml.safe_dump(config_dict, sort_keys=False)


def write_config(config_dict: dict[str, Any], path: str | Path) -> Path:
    """Write the config as YAML (.yaml/.yml) or JSON (.json)."""
    import json
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        path.write_text(to_yaml(config_dict), encoding="utf-8")
    elif path.suffix.lower() == ".json":
        path.write_text(json.dumps(config_dict, indent=2), encoding="utf-8")
    else:
        raise ConfigError(f"--export-config {path}: write a .yaml, .yml or .json file")
    return path


def usage(config_dict: dict[str, Any], path: str | Path) -> str:
    """How to apply the exported file with coremltools directly (op names are those of the fp16
    ML program that ct.convert makes of the same model, as the lab converts it)."""
    if str(path).endswith((".yaml", ".yml")):
        load = f"config = cto.OptimizationConfig.from_yaml({str(path)!r})"
    else:
        load = f"import json\nconfig = cto.OptimizationConfig.from_dict(json.load(open({str(path)!r})))"
    return ("import coremltools as ct\nimport coremltools.optimize.coreml as cto\n" + load + "\n"
            f"compressed = cto.{apply_function(config_dict)}(ct.models.MLModel('model_fp16.mlpackage'), config)")
