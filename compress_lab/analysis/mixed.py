"""Mixed precision under an accuracy budget: the smallest per-op assignment of
settings (from a family's levels, or uncompressed) that meets the budget.

Search: (1) each op alone at each level is measured on a fixed validation subset,
giving its output noise; (2) a greedy sequence of moves (one op one level more
aggressive), cheapest added noise per bit saved first; (3) a binary search for the
longest prefix of that sequence that meets the budget, measured with all its
weights replaced; (4) the uniform settings are measured too, so the answer is never
larger than the best uniform setting that meets the budget on the subset; (5) from
the best answer, single ops are pushed one level further while the budget holds. The
chosen assignment is then compressed for real and evaluated on the whole folder."""

from __future__ import annotations

import heapq
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from compress_lab.analysis.compressors import DEFAULT_LEVELS, check_family, compressed_bits, simulate
from compress_lab.analysis.sensitivity import DEFAULT_WEIGHT_THRESHOLD, compressible_weights
from compress_lab.analysis.subset import Measurement, SubsetEvaluator
from compress_lab.errors import ConfigError

UNCOMPRESSED = -1


@dataclass(frozen=True)
class Budget:
    """`top1_drop`: at most `value` points (percent) of top-1 below the uncompressed model;
    `agreement`: at least `value` (a fraction, e.g. 0.99) top-1 agreement with it."""

    metric: Literal["top1_drop", "agreement"]
    value: float

    def __post_init__(self) -> None:
        if self.metric not in ("top1_drop", "agreement"):
            raise ConfigError(f"budget metric {self.metric!r} is not supported; use 'top1_drop' (points) or 'agreement' (fraction)")
        if self.metric == "top1_drop" and not 0 <= self.value <= 100:
            raise ConfigError(f"a top-1 drop budget of {self.value!r} points must be between 0 and 100")
        if self.metric == "agreement" and not 0 < self.value <= 1:
            raise ConfigError(f"an agreement budget of {self.value!r} must be a fraction in (0, 1], e.g. 0.99")

    def met(self, measured: Measurement, baseline: Measurement) -> bool:
        if self.metric == "agreement":
            return measured.agreement >= self.value - 1e-12
        if measured.top1 is None or baseline.top1 is None:
            raise ConfigError("a top-1 drop budget needs a labelled validation folder; use an agreement budget instead")
        return (baseline.top1 - measured.top1) * 100 <= self.value + 1e-9

    def describe(self) -> str:
        return f"top-1 drop <= {self.value} points" if self.metric == "top1_drop" else f"agreement >= {self.value}"


@dataclass
class MixedResult:
    family: str
    levels: list[dict[str, Any]]
    budget: dict[str, Any]
    assignment: dict[str, int]            # op name -> level index (-1 = uncompressed)
    chosen: str                           # "mixed" or "uniform level N"
    weight_bits: float                    # estimated payload of the compressed weights
    subset: dict[str, Any]                # measured on the search subset
    uniform: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def technique_config(self, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """The lab technique config (op_overrides per op) that reproduces this assignment."""
        counts: dict[int, int] = {}
        for level in self.assignment.values():
            counts[level] = counts.get(level, 0) + 1
        compressed_levels = [l for l in counts if l != UNCOMPRESSED] or [0]
        global_level = max(compressed_levels, key=lambda l: (counts.get(l, 0), l))
        config = {"technique": self.family, **(base or {}), **self.levels[global_level]}
        overrides = {}
        for op, level in sorted(self.assignment.items()):
            if level == UNCOMPRESSED:
                overrides[op] = "skip"
            elif level != global_level:
                overrides[op] = dict(self.levels[level])
        config["op_overrides"] = overrides
        return config


def search_mixed(evaluator: SubsetEvaluator, family: str, budget: Budget, levels: list[dict[str, Any]] | None = None,
                 weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD,
                 progress: Callable[[str, int, int], None] | None = None) -> MixedResult:
    check_family(family)
    levels = [dict(l) for l in (levels or DEFAULT_LEVELS[family])]
    started = time.perf_counter()
    weights = evaluator.base.weights()
    ops = compressible_weights(weights, weight_threshold)
    if not ops:
        raise ConfigError(f"the model has no weights of at least {weight_threshold} elements to compress")
    baseline = evaluator.baseline
    if budget.metric == "top1_drop" and baseline.top1 is None:
        raise ConfigError("a top-1 drop budget needs a labelled validation folder; use an agreement budget instead")
    originals = {op.name: np.asarray(weights[op.name]) for op in ops}
    variants = {op.name: [simulate(originals[op.name], family, l) for l in levels] for op in ops}
    bits = {op.name: [compressed_bits(family, l, op.numel, op.shape[0]) for l in levels] for op in ops}
    float_bits = {op.name: op.numel * 16.0 for op in ops}

    def overrides(assignment: dict[str, int]) -> dict[str, np.ndarray]:
        return {name: variants[name][lvl] for name, lvl in assignment.items() if lvl != UNCOMPRESSED}

    def total_bits(assignment: dict[str, int]) -> float:
        return sum(float_bits[n] if l == UNCOMPRESSED else bits[n][l] for n, l in assignment.items())

    # (1) each op alone at each level: relative output noise power (adds up across ops, roughly)
    noise: dict[str, list[float]] = {}
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

    # (3) longest passing prefix (binary search; passing is close to monotone along the sequence)
    cache: dict[int, Measurement] = {}

    def measure_prefix(k: int) -> Measurement:
        if k not in cache:
            cache[k] = evaluator.measure(overrides(sequence[k - 1])) if k else baseline
            if progress:
                progress("search", len(cache), max(1, int(np.log2(len(sequence) + 1)) + 1))
        return cache[k]

    lo, hi = 0, len(sequence)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if budget.met(measure_prefix(mid), baseline):
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
        measured = evaluator.measure(overrides(assignment))
        ok = budget.met(measured, baseline)
        uniform.append({"level": level, "weight_bits": total_bits(assignment), "meets_budget": ok, **asdict(measured)})
        if ok and total_bits(assignment) < total_bits(best_assignment):
            best_assignment, best_measured, chosen = assignment, measured, f"uniform {level}"
        if progress:
            progress("uniform", lvl + 1, len(levels))

    # (5) local refinement: from the best answer, push single ops one level further while the budget holds
    improved = True
    while improved:
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
            trial = dict(best_assignment, **{name: best_assignment[name] + 1})
            measured = evaluator.measure(overrides(trial))
            if progress:
                progress("refine", evaluator.evaluations, evaluator.evaluations)
            if budget.met(measured, baseline):
                best_assignment, best_measured, chosen, improved = trial, measured, "mixed", True
                break

    levels_used = set(best_assignment.values())
    if chosen == "mixed" and len(levels_used) == 1 and UNCOMPRESSED not in levels_used:
        chosen = f"uniform {levels[levels_used.pop()]}"
    return MixedResult(
        family=family, levels=levels, budget=asdict(budget), assignment=best_assignment, chosen=chosen,
        weight_bits=total_bits(best_assignment),
        subset={"images": len(evaluator.x), "baseline": asdict(baseline), "measured": asdict(best_measured),
                "meets_budget": budget.met(best_measured, baseline)},
        uniform=uniform, evaluations=evaluator.evaluations, elapsed_s=time.perf_counter() - started)
