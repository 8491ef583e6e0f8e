"""Mixed precision under an accuracy budget: the smallest per-op assignment of
settings (from a compression's levels, or uncompressed) that meets the budget.

Search: (1) each op alone at each level is measured on a fixed validation subset,
giving its output noise; (2) a greedy sequence of moves (one op one level more
aggressive), cheapest added noise per bit saved first; (3) a binary search for the
longest prefix of that sequence that meets the budget, measured with all its
weights replaced; (4) the uniform settings are measured too, so the answer is never
larger than the best uniform setting that meets the budget on the subset; (5) from
the best answer, single ops are pushed one level further while the budget holds (each
round tries the ops cheapest first and takes the first that passes, until a round
finds none). The chosen assignment is then compressed for real and evaluated on the
whole folder.

Under a size budget (bytes on disk, or bits per weight) the dual: the first prefix of
the same sequence whose estimated payload fits, its slack given back to the ops whose
noise falls most per bit, measured beside the least aggressive uniform level that fits;
the most accurate wins, and mixed_run checks the real package against the budget.

Two searches (`search=`): "exact" (the algorithm above as first written: every op measured
alone at every level, palettize k-means levels simulated with coremltools' k-means) and
"fast", the default:
- the single-op stage simulates k-means levels with the lab's exact 1-D k-means (mode
  "fast_kmeans": the same LUT sizes, weight error never above coremltools'); under an agreement
  budget it measures each op at every level on the subset's FRAGILE_SAMPLES most fragile samples
  (where an agreement budget is decided: on dog_mobilenetv2 this led to a 12% smaller payload
  than the exact search's noise on all 75 images), each run resuming at the op from the
  uncompressed run's checkpoints (runtime/interpreter.py); under other budgets it measures each
  op at two levels (the least aggressive and a reference one) on a part of the subset,
  predicting its other levels from their weight error: noise(level) = noise(reference) *
  (error(level) / error(reference)) ** p (see _predicted_noise);
- under an agreement budget every trial of stages (3) and (5) runs first on the subset's
  FRAGILE_SAMPLES most fragile samples (smallest top-2 margin of the uncompressed model): a
  trial that already disagrees there on more samples than the whole subset allows fails
  without running the rest, so the refinement can try every op in every round as the exact
  one does (most of its trials fail, now cheaply); other budgets stop the refinement after
  FAST_REFINE_FAILS failed trials;
- every measurement on the whole subset holds the weights as the answer's package will (the
  levels as given, compressed with coremltools when first needed), so the answer's own
  measurement is that of its package, and it keeps the levels as given (its exported
  coremltools config reproduces it)."""

from __future__ import annotations

import heapq
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from compress_lab.analysis.compressors import DEFAULT_LEVELS, check_compression, compressed_bits, simulate
from compress_lab.analysis.sensitivity import DEFAULT_WEIGHT_THRESHOLD, compressible_weights
from compress_lab.analysis.subset import Measurement, SubsetEvaluator
from compress_lab.errors import ConfigError

UNCOMPRESSED = -1
SEARCHES = ("fast", "exact")
FAST_REFINE_FAILS = 4  # fast search without a fragile part: refinement stops after this many failed tries
FRAGILE_SAMPLES = 8    # fast search, agreement budgets: trials run first on this many most fragile samples
FAST_SINGLE_OP_FRACTION = 0.25  # fast search: single ops measured on this part of the subset (>= 16 samples)
PREFETCH_LEVELS = 2    # fast search: coremltools compresses every op at this many least aggressive levels ahead
CALIBRATION_OPS = 4    # fast search: ops also measured at a second level, to fit how noise grows with error
EXPONENT_RANGE = (0.5, 4.0)


ACCURACY_BUDGETS = ("top1_drop", "agreement")
SIZE_BUDGETS = ("bytes", "bits_per_weight")


@dataclass(frozen=True)
class Budget:
    """Accuracy budgets (the smallest mix within them): `top1_drop`: at most `value` points
    (percent) of top-1 below the uncompressed model; `agreement`: at least `value` (a fraction,
    e.g. 0.99) top-1 agreement with it; any other metric of the model's task (or of a user
    metric), by name: at most `value` worse than the uncompressed model in the metric's own
    direction and unit (`perplexity` 0.5 = at most 0.5 above), or with `relative`, at most
    `value` percent worse (`perplexity` 5 = at most 5% above). Size budgets (the most accurate
    mix within them): `bytes`: at most `value` bytes on disk of the .mlpackage;
    `bits_per_weight`: at most `value` bits per weight of its weights file."""

    metric: str
    value: float
    relative: bool = False

    @property
    def is_size(self) -> bool:
        return self.metric in SIZE_BUDGETS

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric.isidentifier():
            raise ConfigError(f"budget metric {self.metric!r} is not supported; use 'top1_drop' (points), "
                              "'agreement' (fraction), 'bytes', 'bits_per_weight' or a metric of the model's task "
                              "(e.g. 'mrr', 'perplexity')")
        if not isinstance(self.value, (int, float)) or isinstance(self.value, bool) or self.value != self.value:
            raise ConfigError(f"budget value {self.value!r} must be a number")
        if self.relative and self.metric in ACCURACY_BUDGETS + SIZE_BUDGETS:
            raise ConfigError(f"a relative (percent) budget is for a task metric, not {self.metric!r}")
        if self.metric == "bytes" and not self.value >= 1:
            raise ConfigError(f"a size budget of {self.value!r} bytes must be a positive number of bytes")
        if self.metric == "bits_per_weight" and not 0 < self.value <= 32:
            raise ConfigError(f"a size budget of {self.value!r} bits per weight must be in (0, 32], e.g. 4")
        if self.metric == "top1_drop" and not 0 <= self.value <= 100:
            raise ConfigError(f"a top-1 drop budget of {self.value!r} points must be between 0 and 100")
        if self.metric == "agreement" and not 0 < self.value <= 1:
            raise ConfigError(f"an agreement budget of {self.value!r} must be a fraction in (0, 1], e.g. 0.99")
        if self.metric not in ACCURACY_BUDGETS + SIZE_BUDGETS and self.value < 0:
            raise ConfigError(f"a budget of {self.value!r} on {self.metric!r} is how much worse the metric may get; "
                              "give a number >= 0")

    def check_measurable(self, baseline: Measurement) -> None:
        """A ConfigError before any search when the data cannot measure this budget."""
        if self.is_size:
            return
        if self.metric == "top1_drop" and baseline.top1 is None:
            raise ConfigError("a top-1 drop budget needs a labelled validation folder; use an agreement budget instead")
        if self.metric == "agreement" and baseline.agreement is None:
            raise ConfigError("an agreement budget needs outputs that are class scores; this model's are not, so give "
                              f"a budget on one of its metrics: {sorted(baseline.values)}")
        if self.metric not in ACCURACY_BUDGETS and self.metric not in baseline.values:
            raise ConfigError(f"budget metric {self.metric!r} is not measured for this model and data; its metrics "
                              f"are {sorted(baseline.values)}")

    def met(self, measured: Measurement, baseline: Measurement) -> bool:
        if self.is_size:
            raise ConfigError("a size budget is met by the package's size, not by a measurement; use size_met()")
        if self.metric == "agreement":
            if measured.agreement is None:
                self.check_measurable(measured)
            return measured.agreement >= self.value - 1e-12
        if self.metric == "top1_drop":
            if measured.top1 is None or baseline.top1 is None:
                raise ConfigError("a top-1 drop budget needs a labelled validation folder; use an agreement budget "
                                  "instead")
            return (baseline.top1 - measured.top1) * 100 <= self.value + 1e-9
        self.check_measurable(baseline)
        return measured.worsening(self.metric, baseline, self.relative) <= self.value + 1e-9

    def fails_on_part(self, measured: Measurement, part_count: int, count: int) -> bool:
        """True when a measurement on `part_count` of the subset's `count` samples already breaks
        the budget whatever the other samples give (agreement: more disagreements than the whole
        subset allows); False when it cannot tell (other budgets: a top-1 drop on a part can be
        made up by the other samples, so they are measured on the whole subset)."""
        if self.metric == "agreement" and measured.agreement is not None:
            disagreements = round((1 - measured.agreement) * part_count)
            return disagreements > np.floor((1 - self.value) * count + 1e-9)
        return False

    def size_met(self, sizes: dict[str, Any]) -> bool:
        """On a package's measured sizes (package_size(...).to_dict() or a run's sizes)."""
        if self.metric == "bytes":
            return (sizes.get("package_bytes") or sizes.get("bytes")) <= self.value
        return sizes["bits_per_weight"] <= self.value + 1e-9

    def describe(self) -> str:
        fixed = {"top1_drop": f"top-1 drop <= {self.value:g} points", "agreement": f"agreement >= {self.value:g}",
                 "bytes": f"size <= {int(self.value):,} bytes", "bits_per_weight": f"<= {self.value:g} bits per weight"}
        if self.metric in fixed:
            return fixed[self.metric]
        return f"{self.metric} at most {self.value:g}{'%' if self.relative else ''} worse than uncompressed"


@dataclass
class MixedResult:
    compression: str
    levels: list[dict[str, Any]]
    budget: dict[str, Any]
    assignment: dict[str, int]            # op name -> level index (-1 = uncompressed)
    chosen: str                           # "mixed" or "uniform level N"
    weight_bits: float                    # estimated payload of the compressed weights
    subset: dict[str, Any]                # measured on the search subset
    uniform: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    elapsed_s: float = 0.0
    noise: dict[str, list[float]] = field(default_factory=dict)  # op -> relative output noise per level, alone
    size_target: dict[str, Any] = field(default_factory=dict)   # size budgets: the weight bits aimed at
    reused_single_op: bool = False                               # the single-op stage came from an earlier search
    search: str = "exact"                                        # "fast" or "exact" (see the module docstring)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def technique_config(self, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """The lab technique config (op_overrides per op) that reproduces this assignment."""
        counts: dict[int, int] = {}
        for level in self.assignment.values():
            counts[level] = counts.get(level, 0) + 1
        compressed_levels = [l for l in counts if l != UNCOMPRESSED] or [0]
        global_level = max(compressed_levels, key=lambda l: (counts.get(l, 0), l))
        config = {"technique": self.compression, **(base or {}), **self.levels[global_level]}
        overrides = {}
        for op, level in sorted(self.assignment.items()):
            if level == UNCOMPRESSED:
                overrides[op] = "skip"
            elif level != global_level:
                overrides[op] = dict(self.levels[level])
        config["op_overrides"] = overrides
        return config


def search_mixed(evaluator: SubsetEvaluator, compression: str, budget: Budget, levels: list[dict[str, Any]] | None = None,
                 weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD,
                 progress: Callable[[str, int, int], None] | None = None,
                 noise: dict[str, list[float]] | None = None, margin_bytes: float = 0.0,
                 variants: dict[str, list[np.ndarray]] | None = None, search: str = "fast",
                 single_op_samples: int | None = None) -> MixedResult:
    """The search (see the module docstring). `noise`: the single-op stage of an earlier search
    on the same package, subset and levels (MixedResult.noise), reused instead of measured.
    Size budgets: `margin_bytes` is kept free below the budget (the caller raises it when the
    real package came out larger than estimated). `variants`: a dict of each op's weight
    compressed + decompressed at each level; used when it holds them all (an earlier search's),
    else filled in (so a caller can store it beside `noise`). `search`: "fast" (default) or
    "exact" (see the module docstring). `single_op_samples`: the fast search measures single
    ops, and takes its first guess of the longest passing prefix, on at most this many evenly
    spaced samples of the subset (default: a quarter of it, at least 16)."""
    check_compression(compression)
    check_search(search)
    levels = [dict(l) for l in (levels or DEFAULT_LEVELS[compression])]
    simulated = search_levels(compression, levels, search)  # how each level's weights are simulated
    started = time.perf_counter()
    weights = evaluator.base.weights()
    ops = compressible_weights(weights, weight_threshold)
    if not ops:
        raise ConfigError(f"the model has no weights of at least {weight_threshold} elements to compress")
    baseline = evaluator.baseline
    budget.check_measurable(baseline)
    originals = {op.name: np.asarray(weights[op.name]) for op in ops}
    if variants is None:
        variants = {}
    complete = set(variants) == {op.name for op in ops} and all(
        len(variants[op.name]) == len(levels) and all(v.shape == tuple(op.shape) for v in variants[op.name]) for op in ops)
    if not complete:
        variants.clear()
        variants.update({op.name: [simulate(originals[op.name], compression, l) for l in simulated] for op in ops})
    bits = {op.name: [compressed_bits(compression, l, op.numel, op.shape[0]) for l in levels] for op in ops}
    float_bits = {op.name: op.numel * 16.0 for op in ops}

    real = _RealVariants(originals, compression, levels, simulated, variants)
    real_variant = real.get

    def overrides(assignment: dict[str, int]) -> dict[str, np.ndarray]:
        return {name: real_variant(name, lvl) for name, lvl in assignment.items() if lvl != UNCOMPRESSED}

    def simulated_overrides(assignment: dict[str, int]) -> dict[str, np.ndarray]:
        return {name: variants[name][lvl] for name, lvl in assignment.items() if lvl != UNCOMPRESSED}

    def total_bits(assignment: dict[str, int]) -> float:
        return sum(float_bits[n] if l == UNCOMPRESSED else bits[n][l] for n, l in assignment.items())

    if budget.is_size:  # refuse an impossible size budget before measuring anything
        target = size_target_bits(evaluator, budget, sum(float_bits.values()), margin_bytes)
        smallest = {op.name: len(levels) - 1 for op in ops}
        if total_bits(smallest) > target["target_bits"]:
            raise ConfigError(f"no assignment of these levels fits {budget.describe()}: the most aggressive level "
                              f"everywhere needs about {int(target['fixed_bytes'] + total_bits(smallest) / 8):,} "
                              "bytes; raise the budget or add a more aggressive level")

    if search == "fast" and not budget.is_size:
        real.prefetch([op.name for op in ops])
    try:
        # (1) each op alone at each level: relative output noise power (adds up across ops, roughly)
        reused = noise is not None and set(noise) == {op.name for op in ops} and all(len(v) == len(levels)
                                                                                   for v in noise.values())
        # fast search: the part of the subset single ops (and the first guess of stage 3) are measured on
        probe = _probe(evaluator, single_op_samples) if search == "fast" and not (reused and budget.is_size) else None
        # fast search, agreement budgets: the subset's most fragile samples, where a failing trial shows first
        screen = _fragile_part(evaluator, budget) if search == "fast" else None
        if reused:
            noise = {name: list(values) for name, values in noise.items()}
        elif search == "fast" and screen is not None:
            noise = _fragile_noise(screen, ops, variants, len(levels), progress)
        elif search == "fast":
            noise = _predicted_noise(probe, ops, originals, variants, len(levels), progress)
        else:
            noise = {}
            total_single = len(ops) * len(levels)
            done = 0
            for op in ops:
                noise[op.name] = []
                for lvl in range(len(levels)):
                    measured = evaluator.measure({op.name: variants[op.name][lvl]})
                    noise[op.name].append(10 ** (-measured.snr_db / 10))
                    done += 1
                    if progress:
                        progress("single-op", done, total_single)
                noise[op.name] = list(np.maximum.accumulate(noise[op.name]))  # more aggressive never counts as less noise

        # (2) greedy move sequence
        state = {op.name: UNCOMPRESSED for op in ops}
        heap: list[tuple[float, str]] = []

        def push(name: str) -> None:
            current = state[name]
            nxt = current + 1
            if nxt >= len(levels):
                return
            before_noise = 0.0 if current == UNCOMPRESSED else noise[name][current]
            before_bits = float_bits[name] if current == UNCOMPRESSED else bits[name][current]
            saved = before_bits - bits[name][nxt]
            if saved <= 0:
                return
            heapq.heappush(heap, ((noise[name][nxt] - before_noise) / saved, name))

        for op in ops:
            push(op.name)
        sequence: list[dict[str, int]] = []
        while heap:
            _, name = heapq.heappop(heap)
            state[name] += 1
            sequence.append(dict(state))
            push(name)

        if budget.is_size:
            result = _within_size(evaluator, compression, budget, levels, ops, sequence, noise, bits, float_bits, overrides,
                                  total_bits, margin_bytes, started)
            result.evaluations += _part_evaluations(evaluator, probe)
            result.search = search
            return result


        def trial(assignment: dict[str, int], keep: bool = False) -> Measurement | None:
            """The assignment measured on the subset; None when the fragile part alone breaks the budget.
            `keep`: the runs can become the anchors (see SubsetEvaluator.anchor_on_last)."""
            weights = overrides(assignment)
            if screen is not None and budget.fails_on_part(screen.measure(weights, keep=keep), screen.count,
                                                           evaluator.count):
                return None
            return evaluator.measure(weights, keep=keep)

        def accepted(measured: Measurement | None) -> bool:
            return measured is not None and budget.met(measured, baseline)

        # (3) longest passing prefix (binary search; passing is close to monotone along the sequence)
        cache: dict[int, Measurement | None] = {}

        def measure_prefix(k: int) -> Measurement | None:
            if k not in cache:
                cache[k] = trial(sequence[k - 1]) if k else baseline
                if progress:
                    progress("search", len(cache), max(1, int(np.log2(len(sequence) + 1)) + 1))
            return cache[k]

        def passes(k: int) -> bool:
            return accepted(measure_prefix(k))

        lo, hi = 0, len(sequence)
        if search == "fast" and probe is not None and probe is not evaluator and sequence:
            # a first guess from the same binary search on the (cheaper) part, then galloping from it on the
            # whole subset to a bracket [lo, hi] (passes(lo), everything above hi assumed failing)
            plo, phi = 0, len(sequence)
            while plo < phi:
                mid = (plo + phi + 1) // 2
                if budget.met(probe.measure(simulated_overrides(sequence[mid - 1])), probe.baseline):
                    plo = mid
                else:
                    phi = mid - 1
            step = 1
            if passes(plo):
                lo = plo
                while lo < hi:
                    k = min(lo + step, hi)
                    if not passes(k):
                        hi = k - 1
                        break
                    lo, step = k, step * 2
            else:
                hi = plo - 1
                while True:
                    k = max(plo - step, 0)
                    if passes(k):
                        lo = k
                        break
                    hi, step = k - 1, step * 2
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if passes(mid):
                lo = mid
            else:
                hi = mid - 1
        best_assignment = sequence[lo - 1] if lo else {op.name: UNCOMPRESSED for op in ops}
        best_measured = measure_prefix(lo)
        chosen = "mixed"

        # (4) uniform levels, so the answer is never larger than the best uniform setting within budget
        uniform = []
        for lvl, level in enumerate(levels):
            assignment = {op.name: lvl for op in ops}
            if search == "fast" and (total_bits(assignment) >= total_bits(best_assignment)
                                     or any(u["meets_budget"] is False for u in uniform)):
                # cannot be smaller than the answer, or a less aggressive uniform level already failed (passing
                # is close to monotone in the level): not measured by the fast search
                uniform.append({"level": level, "weight_bits": total_bits(assignment), "meets_budget": None})
                continue
            measured = evaluator.measure(overrides(assignment))
            ok = budget.met(measured, baseline)
            uniform.append({"level": level, "weight_bits": total_bits(assignment), "meets_budget": ok, **asdict(measured)})
            if ok and total_bits(assignment) < total_bits(best_assignment):
                best_assignment, best_measured, chosen = assignment, measured, f"uniform {level}"
            if progress:
                progress("uniform", lvl + 1, len(levels))

        # (5) local refinement: from the best answer, push single ops one level further while the budget holds;
        # each round tries the ops cheapest added noise per bit first and takes the first that passes
        improved = True
        full_fails_left = None if search == "exact" or screen is not None else FAST_REFINE_FAILS
        if search == "fast":  # each candidate differs from the best in one op: runs resume from the best's
            for part in (evaluator, screen):
                if part is not None:
                    part.anchor(overrides(best_assignment))
        while improved and full_fails_left != 0:
            improved = False
            candidates = []
            for name, level in best_assignment.items():
                if level + 1 < len(levels):
                    before = float_bits[name] if level == UNCOMPRESSED else bits[name][level]
                    saved = before - bits[name][level + 1]
                    if saved > 0:
                        cost = noise[name][level + 1] - (0.0 if level == UNCOMPRESSED else noise[name][level])
                        candidates.append((cost / saved, name))
            for _, name in sorted(candidates):
                candidate = dict(best_assignment, **{name: best_assignment[name] + 1})
                measured = trial(candidate, keep=True) if search == "fast" else evaluator.measure(overrides(candidate))
                if progress:
                    progress("refine", evaluator.evaluations, evaluator.evaluations)
                if accepted(measured):
                    best_assignment, best_measured, chosen, improved = candidate, measured, "mixed", True
                    for part in (evaluator, screen) if search == "fast" else ():
                        if part is not None:
                            part.anchor_on_last()
                    break
                if full_fails_left is not None:
                    full_fails_left -= 1
                    if full_fails_left == 0:
                        break

        levels_used = set(best_assignment.values())
        if chosen == "mixed" and len(levels_used) == 1 and UNCOMPRESSED not in levels_used:
            chosen = f"uniform {levels[levels_used.pop()]}"
        return MixedResult(
            compression=compression, levels=levels, budget=asdict(budget), assignment=best_assignment, chosen=chosen,
            weight_bits=total_bits(best_assignment),
            subset={"images": evaluator.count, "baseline": asdict(baseline), "measured": asdict(best_measured),
                    "meets_budget": budget.met(best_measured, baseline),
                    "single_op_images": probe.count if probe is not None else evaluator.count,
                    "fragile_samples": screen.count if screen is not None else 0,
                    "part_evaluations": _part_evaluations(evaluator, probe, screen),
                    "real_variants": real.computed()},
            uniform=uniform, evaluations=evaluator.evaluations + _part_evaluations(evaluator, probe, screen),
            elapsed_s=time.perf_counter() - started, noise=noise, search=search)
    finally:
        real.close()


class _RealVariants:
    """Each op's weight as the answer's package will hold it, per level: the simulated one where
    the search simulates the level as given, else the level as given compressed with coremltools,
    once. The fast search's whole-subset trials need the least aggressive levels first, so those
    are computed ahead, PREFETCH_LEVELS of them, on a background thread while the single-op stage
    and the first trials run, for the weights coremltools clusters in C, off the GIL."""

    def __init__(self, originals, compression, levels, simulated, variants):
        self._originals, self._compression, self._levels = originals, compression, levels
        self._simulated, self._variants = simulated, variants
        self._done: dict[tuple[str, int], np.ndarray] = {}
        self._pending: dict[tuple[str, int], Any] = {}
        self._pool = None

    def _needs_coremltools(self, lvl: int) -> bool:
        return self._simulated[lvl] != self._levels[lvl]

    def _compress(self, name: str, lvl: int) -> np.ndarray:
        return simulate(self._originals[name], self._compression, self._levels[lvl])

    def _off_the_gil(self, name: str, lvl: int) -> bool:
        """coremltools clusters this weight with kmeans1d, in C (fp16, per tensor, >= 10,000 elements;
        its scikit-learn path for the others would only compete with the evaluations for the GIL)."""
        weight, level = self._originals[name], self._levels[lvl]
        return (self._compression == "palettize" and weight.dtype == np.float16 and weight.size >= 10_000
                and level.get("granularity", "per_tensor") == "per_tensor" and level.get("cluster_dim", 1) == 1)

    def prefetch(self, names: list[str]) -> None:
        from concurrent.futures import ThreadPoolExecutor
        wanted = [(name, lvl) for lvl in range(min(PREFETCH_LEVELS, len(self._levels))) if self._needs_coremltools(lvl)
                  for name in names if self._off_the_gil(name, lvl)]
        if wanted:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixed-kmeans")
            self._pending = {key: self._pool.submit(self._compress, *key) for key in wanted}

    def get(self, name: str, lvl: int) -> np.ndarray:
        if not self._needs_coremltools(lvl):
            return self._variants[name][lvl]
        key = (name, lvl)
        if key not in self._done:
            pending = self._pending.pop(key, None)
            self._done[key] = pending.result() if pending is not None else self._compress(name, lvl)
        return self._done[key]

    def computed(self) -> int:
        return len(self._done) + sum(1 for f in self._pending.values() if f.done())

    def close(self) -> None:
        """Stops the work not started yet (a search that ends early does not wait for it)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def check_search(search: str) -> None:
    if search not in SEARCHES:
        raise ConfigError(f"search {search!r} is not known; use 'fast' (the default: exact k-means, two measurements "
                          "per op) or 'exact' (every op measured at every level, coremltools' k-means)")


def search_levels(compression: str, levels: list[dict[str, Any]] | None, search: str = "fast") -> list[dict[str, Any]]:
    """How a search simulates `levels` (default: the compression's): copies of them; the fast search
    simulates palettize k-means levels (mode "kmeans" or unset, scalar LUTs) with the lab's exact
    k-means (mode "fast_kmeans", weight error never above coremltools') when every level is one of
    them. The answer keeps the levels as given (its exported coremltools config reproduces it)."""
    import importlib.util
    levels = [dict(l) for l in (levels or DEFAULT_LEVELS[compression])]
    if search != "fast" or compression != "palettize":
        return levels
    kmeans = all(l.get("mode", "kmeans") in ("kmeans", "fast_kmeans") and l.get("cluster_dim", 1) == 1 for l in levels)
    if not kmeans or importlib.util.find_spec("compress_lab.techniques.fast_palettize") is None:
        return levels
    return [dict(l, mode="fast_kmeans") for l in levels]


def reference_level(errors: list[float]) -> int | None:
    """The level a fast single-op stage measures an op at: the middle level (e.g. 4 bits of
    8/6/4/3/2/1), else the nearest more aggressive one, else less aggressive, whose weight error
    is not zero; None when every level leaves the weight as it is."""
    middle = (len(errors) - 1) // 2
    for lvl in list(range(middle, len(errors))) + list(range(middle - 1, -1, -1)):
        if errors[lvl] > 0:
            return lvl
    return None


def calibration_level(errors: list[float], ref: int) -> int | None:
    """The second level a calibrating op is measured at: two levels more aggressive than the
    reference (2 bits of 8/6/4/3/2/1; the last is often past where the budget lies), else the
    most aggressive, with a larger weight error than the reference's; None if there is none."""
    for lvl in [ref + 2] + list(range(len(errors) - 1, ref, -1)):
        if lvl < len(errors) and errors[lvl] > errors[ref]:
            return lvl
    return None


def noise_exponent(noise_ref: float, noise_other: float, error_ref: float, error_other: float) -> float | None:
    """p of noise ~ error**p through two measurements of one op (None when they cannot tell)."""
    if not (noise_ref > 0 and noise_other > noise_ref and error_other > error_ref > 0):
        return None
    return float(np.clip(np.log(noise_other / noise_ref) / np.log(error_other / error_ref), *EXPONENT_RANGE))


def _probe(evaluator: SubsetEvaluator, single_op_samples: int | None) -> SubsetEvaluator:
    """The part of the subset the fast search measures single ops on: `single_op_samples`
    samples, by default FAST_SINGLE_OP_FRACTION of the subset but at least 16."""
    if single_op_samples is None:
        single_op_samples = max(16, int(np.ceil(evaluator.count * FAST_SINGLE_OP_FRACTION)))
    return evaluator.part(single_op_samples)


def _part_evaluations(evaluator: SubsetEvaluator, *parts: SubsetEvaluator | None) -> int:
    """Runs on parts of the subset (their baselines too), which `evaluator` does not count."""
    return sum(part.evaluations + 1 for part in parts if part is not None and part is not evaluator)


def _fragile_part(evaluator: SubsetEvaluator, budget: Budget) -> SubsetEvaluator | None:
    """The FRAGILE_SAMPLES samples of the subset the uncompressed model classifies by the smallest
    margin, for budgets a part can break (Budget.fails_on_part); None for the others."""
    if budget.is_size or budget.metric != "agreement" or evaluator.count <= FRAGILE_SAMPLES:
        return None
    order = evaluator.fragile_order()
    return None if order is None else evaluator.samples(order[:FRAGILE_SAMPLES])


def _fragile_noise(screen: SubsetEvaluator, ops, variants, n_levels: int, progress) -> dict[str, list[float]]:
    """The fast single-op stage under an agreement budget: each op alone at every level, measured on
    the subset's most fragile samples (where compression first flips a class, so where an agreement
    budget is decided), each run resuming at the op from the uncompressed run's checkpoints."""
    screen.anchor({})
    noise: dict[str, list[float]] = {}
    total, done = len(ops) * n_levels, 0
    for op in ops:
        values = []
        for lvl in range(n_levels):
            values.append(10 ** (-screen.measure({op.name: variants[op.name][lvl]}).snr_db / 10))
            done += 1
            if progress:
                progress("single-op", done, total)
        noise[op.name] = list(np.maximum.accumulate(values))  # more aggressive never counts as less noise
    return noise


def _predicted_noise(probe: SubsetEvaluator, ops, originals, variants, n_levels: int,
                     progress) -> dict[str, list[float]]:
    """The fast single-op stage. Each op is measured alone at its least aggressive level (8 bits of
    8/6/4/3/2/1: where a tight budget's answer lies) and at its reference level (4 bits), and its
    noise at the other levels predicted from their weight error power e: between the two, on the
    line through them in log-log; beyond the reference, noise(l) = noise(ref) * (e(l) / e(ref)) ** p.
    A few ops (CALIBRATION_OPS, spread over the model's order) are measured at a third level too,
    giving their own p (output noise grows a little faster than linearly with weight error at low
    bits: p ~ 1.5-2 on the sample CNNs); the other ops take the median of those. Measured on
    `probe` (a part of the subset). Returns noise per op and level."""

    def run(name: str, weight: np.ndarray) -> float:
        return 10 ** (-probe.measure({name: weight}).snr_db / 10)

    calibrating = {ops[i].name for i in np.unique(np.linspace(0, len(ops) - 1, min(CALIBRATION_OPS, len(ops))).round()
                                                  .astype(int))}
    total = 2 * len(ops) + len(calibrating)
    done = 0
    measured: dict[str, tuple[list[float], int | None, float, float | None, float | None]] = {}
    for op in ops:
        original = originals[op.name].astype(np.float64)
        errors = [float(np.sum((np.asarray(v, dtype=np.float64) - original) ** 2)) for v in variants[op.name]]
        ref = reference_level(errors)
        at_ref, exponent, at_first = 0.0, None, None
        if ref is not None:
            at_ref = run(op.name, variants[op.name][ref])
            if ref > 0 and errors[0] > 0:
                at_first = run(op.name, variants[op.name][0])
            second = calibration_level(errors, ref) if op.name in calibrating else None
            if second is not None:
                at_second = run(op.name, variants[op.name][second])
                exponent = noise_exponent(at_ref, at_second, errors[ref], errors[second])
        done += 2 + (op.name in calibrating)
        if progress:
            progress("single-op", min(done, total), total)
        measured[op.name] = (errors, ref, at_ref, exponent, at_first)
    exponents = [m[3] for m in measured.values() if m[3] is not None]
    common = float(np.median(exponents)) if exponents else 1.0
    noise: dict[str, list[float]] = {}
    for name, (errors, ref, at_ref, exponent, at_first) in measured.items():
        if ref is None:
            noise[name] = [0.0] * n_levels
            continue
        p = exponent if exponent is not None else common
        # below the reference, through the least aggressive level's measurement (linearly, p = 1, when it
        # tells nothing); above it, with the fitted exponent
        below = 1.0
        if at_first is not None and at_first > 0 and at_ref > 0 and errors[ref] > errors[0]:
            below = float(np.log(at_ref / at_first) / np.log(errors[ref] / errors[0]))
        noise[name] = list(np.maximum.accumulate([at_ref * (e / errors[ref]) ** (p if lvl > ref else below)
                                                  if e > 0 else 0.0 for lvl, e in enumerate(errors)]))
    return noise


def size_target_bits(evaluator: SubsetEvaluator, budget: Budget, float_bits_total: float,
                     margin_bytes: float = 0.0) -> dict[str, Any]:
    """The payload (bits) the compressible weights may take so that the package meets a size
    budget: the budget less what stays as it is (the rest of the float package), less a margin."""
    from compress_lab.models.size import package_size
    base = package_size(evaluator.base.origin)
    if budget.metric == "bytes":
        fixed = base.package_bytes - float_bits_total / 8
        allowed = budget.value - fixed - margin_bytes
    else:  # bits per weight of the weights file
        fixed = base.weights_bytes - float_bits_total / 8
        allowed = budget.value * base.n_weights / 8 - fixed - margin_bytes
    return {"fixed_bytes": fixed, "target_bits": allowed * 8, "margin_bytes": margin_bytes,
            "float_package_bytes": base.package_bytes, "float_weights_bytes": base.weights_bytes,
            "n_weights": base.n_weights}


def _within_size(evaluator, compression, budget, levels, ops, sequence, noise, bits, float_bits, overrides, total_bits,
                 margin_bytes, started) -> MixedResult:
    """Size budgets: the first prefix of the greedy sequence that fits, with the slack it leaves
    given back to the ops whose noise drops most per bit (one level less aggressive at a time),
    measured next to every uniform level that fits; the best measured one wins."""
    target = size_target_bits(evaluator, budget, sum(float_bits.values()), margin_bytes)
    limit = target["target_bits"]
    candidates: list[tuple[str, dict[str, int]]] = []
    fitting = [s for s in sequence if total_bits(s) <= limit]
    if fitting:
        assignment = dict(fitting[0])
        while True:  # give back slack: the relaxation with the most noise removed per bit added that still fits
            slack = limit - total_bits(assignment)
            best, best_gain = None, 0.0
            for name, level in assignment.items():
                if level == UNCOMPRESSED:
                    continue
                lower = level - 1
                extra = (float_bits[name] if lower == UNCOMPRESSED else bits[name][lower]) - bits[name][level]
                removed = noise[name][level] - (0.0 if lower == UNCOMPRESSED else noise[name][lower])
                if 0 < extra <= slack and removed / extra > best_gain:
                    best, best_gain = name, removed / extra
            if best is None:
                break
            assignment[best] -= 1
        candidates.append(("mixed", assignment))
    for lvl, level in enumerate(levels):
        assignment = {op.name: lvl for op in ops}
        if total_bits(assignment) <= limit:
            candidates.append((f"uniform {level}", assignment))
            break  # the least aggressive uniform level that fits; the more aggressive ones are worse
    if not candidates:
        smallest = {op.name: len(levels) - 1 for op in ops}
        raise ConfigError(f"no assignment of these levels fits {budget.describe()}: the most aggressive level "
                          f"everywhere needs about {int(target['fixed_bytes'] + total_bits(smallest) / 8):,} bytes; "
                          "raise the budget or add a more aggressive level")
    measured = [(name, assignment, evaluator.measure(overrides(assignment))) for name, assignment in candidates]
    chosen, best_assignment, best_measured = max(measured, key=lambda c: evaluator.score(c[2]))
    uniform = [{"level": name, "weight_bits": total_bits(a), "meets_budget": True, **asdict(m)}
               for name, a, m in measured if name != "mixed"]
    levels_used = set(best_assignment.values())
    if chosen == "mixed" and len(levels_used) == 1 and UNCOMPRESSED not in levels_used:
        chosen = f"uniform {levels[levels_used.pop()]}"
    return MixedResult(
        compression=compression, levels=levels, budget=asdict(budget), assignment=best_assignment, chosen=chosen,
        weight_bits=total_bits(best_assignment),
        subset={"images": evaluator.count, "baseline": asdict(evaluator.baseline), "measured": asdict(best_measured),
                "meets_budget": total_bits(best_assignment) <= limit},
        uniform=uniform, evaluations=evaluator.evaluations, elapsed_s=time.perf_counter() - started, noise=noise,
        size_target=target)
