"""Exact 1-D k-means over weighted histograms, and k-means palettization built on it.

What is exact:
- `optimal_kmeans_1d(values, weights, k)` returns a global minimiser of the weighted
  sum of squared errors (the classic 1-D k-means dynamic program; optimal clusters are
  contiguous in sorted order). Divide-and-conquer optimisation of each DP layer,
  O(k * n log n) for n distinct values, compiled with numba when it is installed
  (pure Python otherwise: correct but only fit for small inputs).
- `palettize_array` clusters the weighted histogram of a tensor's distinct values, so its
  cost does not grow with the tensor size beyond one pass to build the histogram.
  fp16 tensors, integer tensors and any tensor (or group) with at most
  EXACT_ELEMENTS elements: the histogram holds every distinct value, the clustering is
  the exact optimum. Larger fp32/fp64 tensors: values are first binned by their fp16
  rounding (after a power-of-two rescale so the largest magnitude sits at the top of
  the fp16 range); each bin keeps its element count and exact mean, and the DP is the
  exact optimum over partitions that do not split a bin (bins are one fp16 ulp wide,
  relative width 2**-11), not over all partitions.
- After the optimum is found the centres are rounded to the weight dtype (that is
  what the LUT stores) and each distinct value takes its nearest rounded centre,
  which can only lower the error further.
"""

from __future__ import annotations

import numpy as np

from compress_lab.errors import ConfigError

try:  # numba turns the DP into machine code; without it the same code runs as Python.
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is missing
    def njit(*args, **kwargs):
        if args and callable(args[0]):
            return args[0]
        return lambda f: f

SUPPORTED_NBITS = (1, 2, 3, 4, 6, 8)
GRANULARITIES = ("per_tensor", "per_grouped_channel")
EXACT_ELEMENTS = 1 << 16


@njit(cache=True, nogil=True)
def _dp_boundaries(x, w, k):
    """Optimal k-partition of sorted x (weights w > 0, len(x) > k) into contiguous runs.

    D[m][j] = min over i of D[m-1][i] + SSE(x[i:j]) (cluster m covers [i, j)); opt[m][j]
    is the smallest minimising i. The SSE cost satisfies the quadrangle inequality, so
    opt[m][j] <= opt[m][j+1] (divide and conquer over j: O(n log n) a layer) and
    opt[m-1][j] <= opt[m][j] (Knuth's bound, which halves the scans on weight tensors).
    Returns `starts` (k,) with starts[0] == 0: cluster c covers x[starts[c]:starts[c+1]]."""
    n = x.shape[0]
    p0 = np.zeros(n + 1)
    p1 = np.zeros(n + 1)
    p2 = np.zeros(n + 1)
    for i in range(n):
        p0[i + 1] = p0[i] + w[i]
        p1[i + 1] = p1[i] + w[i] * x[i]
        p2[i + 1] = p2[i] + w[i] * x[i] * x[i]
    prev = np.empty(n + 1)
    cur = np.empty(n + 1)
    prev[0] = 0.0
    for j in range(1, n + 1):
        s = p1[j]
        prev[j] = p2[j] - s * s / p0[j]
    opt = np.zeros((k, n + 1), dtype=np.int32)
    stack = np.empty((4 * (n + 2) + 64, 4), dtype=np.int64)
    for m in range(1, k):
        stack[0, 0] = n if m == k - 1 else m + 1  # the last layer needs only D[k-1][n]
        stack[0, 1] = n
        stack[0, 2] = m
        stack[0, 3] = n - 1
        top = 1
        while top > 0:
            top -= 1
            a = stack[top, 0]
            b = stack[top, 1]
            olo = stack[top, 2]
            ohi = stack[top, 3]
            if a > b:
                continue
            mid = (a + b) // 2
            hi = min(ohi, mid - 1)
            lo = max(olo, opt[m - 1, mid])
            if hi < lo:  # only reachable through rounding noise
                lo = hi
            best = np.inf
            bi = lo
            for i in range(lo, hi + 1):
                wt = p0[mid] - p0[i]
                s = p1[mid] - p1[i]
                v = prev[i] + (p2[mid] - p2[i]) - s * s / wt
                if v < best:
                    best = v
                    bi = i
            cur[mid] = best
            opt[m, mid] = bi
            stack[top, 0] = a
            stack[top, 1] = mid - 1
            stack[top, 2] = olo
            stack[top, 3] = bi
            stack[top + 1, 0] = mid + 1
            stack[top + 1, 1] = b
            stack[top + 1, 2] = bi
            stack[top + 1, 3] = ohi
            top += 2
        prev, cur = cur, prev
    starts = np.zeros(k, dtype=np.int64)
    j = n
    for m in range(k - 1, 0, -1):
        j = opt[m, j]
        starts[m] = j
    return starts


def _optimal_starts(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Start index of each cluster in sorted x; min(k, n) clusters, all non-empty."""
    n = len(x)
    if n <= k:
        return np.arange(n)
    if k == 1:
        return np.zeros(1, dtype=np.int64)
    centred = x - np.average(x, weights=w)  # keeps the prefix sums well conditioned
    return _dp_boundaries(np.ascontiguousarray(centred, dtype=np.float64),
                          np.ascontiguousarray(w, dtype=np.float64), int(k))


def optimal_kmeans_1d(values, weights=None, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Exact weighted 1-D k-means.

    `values`: 1-D array (any order, duplicates allowed); `weights`: same length, > 0
    (default 1). Returns (centres sorted ascending, min(k, #distinct) of them, as
    float64 weighted means; assignment: for each input value, the index of its centre).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if x.size == 0:
        raise ConfigError("optimal_kmeans_1d needs at least one value; got an empty array")
    if w.shape != x.shape:
        raise ConfigError(f"weights has {w.size} entries but values has {x.size}; give one weight per value")
    if not np.all(np.isfinite(x)):
        raise ConfigError("values contain NaN or inf; k-means needs finite values")
    if not np.all(w > 0):
        raise ConfigError("weights must all be > 0; drop zero-weight values first")
    if int(k) != k or k < 1:
        raise ConfigError(f"k must be a positive integer; got {k!r}")
    distinct, inverse = np.unique(x, return_inverse=True)
    dw = np.bincount(inverse, weights=w, minlength=len(distinct))
    starts = _optimal_starts(distinct, dw, int(k))
    labels = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(distinct))))
    mass = np.bincount(labels, weights=dw)
    centres = np.bincount(labels, weights=dw * distinct) / mass
    return centres, labels[inverse.ravel()]


def _histogram(flat: np.ndarray):
    """(bin values sorted ascending, bin counts, bin of each element), see module doc."""
    if flat.dtype == np.float16 or flat.size <= EXACT_ELEMENTS or flat.dtype.kind in "iub":
        if flat.dtype == np.float16:
            bits = flat.view(np.uint16).astype(np.int64)
            keys = np.where(bits & 0x8000, 0xFFFF - bits, bits | 0x8000)  # order-preserving
            counts = np.bincount(keys, minlength=1 << 16)
            present = np.flatnonzero(counts)
            rank = np.zeros(1 << 16, dtype=np.int64)
            rank[present] = np.arange(len(present))
            order = np.where(present & 0x8000, present ^ 0x8000, 0xFFFF - present).astype(np.uint16)
            values = order.view(np.float16).astype(np.float64)
            return values, counts[present].astype(np.float64), rank[keys]
        values, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        return values.astype(np.float64), counts.astype(np.float64), inverse.ravel()
    peak = float(np.max(np.abs(flat)))
    scale = 2.0 ** (14 - np.ceil(np.log2(peak))) if peak > 0 else 1.0
    with np.errstate(over="ignore", under="ignore"):
        binned = (flat.astype(np.float64) * scale).astype(np.float16)
    _, counts, bin_of = _histogram(binned)
    sums = np.bincount(bin_of, weights=flat.astype(np.float64), minlength=len(counts))
    return sums / counts, counts, bin_of


def _round_to(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def palettize_flat(flat: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """One LUT for all of `flat`: (lut (2**nbits,) in flat's dtype, uint8 index per element).

    Same contract as coremltools' k-means step (and a `lut_function`): unused LUT
    entries (fewer distinct values than 2**nbits) are zero."""
    flat = np.asarray(flat).ravel()
    if flat.size == 0:
        raise ConfigError("cannot palettize an empty weight")
    if flat.dtype.kind == "f" and not np.all(np.isfinite(flat)):
        raise ConfigError("the weight holds NaN or inf values; k-means palettization needs finite weights")
    k = 1 << nbits
    values, counts, bin_of = _histogram(flat)
    starts = _optimal_starts(values, counts, k)
    sizes = np.diff(np.append(starts, len(values)))
    labels = np.repeat(np.arange(len(starts)), sizes)
    centres = np.bincount(labels, weights=counts * values) / np.bincount(labels, weights=counts)
    stored = _round_to(centres, flat.dtype)
    as_float = np.sort(stored.astype(np.float64))
    # nearest stored centre for each distinct value (contiguous, so the midpoints decide)
    labels = np.searchsorted((as_float[:-1] + as_float[1:]) / 2, values, side="left")
    lut = np.zeros(k, dtype=flat.dtype)
    lut[: len(as_float)] = _round_to(as_float, flat.dtype)
    return lut, labels[bin_of].astype(np.uint8)


def palettize_array(w: np.ndarray, nbits: int, granularity: str = "per_tensor", group_size: int = 32,
                    channel_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means palettize `w` in the layout of iOS18 constexpr_lut_to_dense.

    Returns (lut, indices): indices has w's shape (uint8, values < 2**nbits); lut has
    rank w.ndim + 2, shape [1, ..., G at channel_axis, ..., 1, 2**nbits, 1] with G = 1
    per tensor or channels / group_size per grouped channel (channels
    [g*group_size, (g+1)*group_size) share LUT g), exactly as coremltools builds it.
    """
    w = np.asarray(w)
    if nbits not in SUPPORTED_NBITS:
        raise ConfigError(f"nbits {nbits!r} is not supported; use one of {SUPPORTED_NBITS}")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity {granularity!r} is not supported; use one of {GRANULARITIES}")
    if w.ndim == 0 or w.size == 0:
        raise ConfigError(f"cannot palettize an array of shape {w.shape}; it needs at least one element")
    if not -w.ndim <= channel_axis < w.ndim:
        raise ConfigError(f"channel_axis {channel_axis} is out of range for an array of shape {w.shape}")
    channel_axis %= w.ndim
    channels = w.shape[channel_axis]
    if granularity == "per_tensor":
        group_size = channels
    elif group_size < 1 or channels % group_size:
        raise ConfigError(f"group_size {group_size} must divide the {channels} channels on axis "
                          f"{channel_axis} of a weight of shape {w.shape}; pick a divisor of {channels}")
    moved = np.moveaxis(w, channel_axis, 0)
    groups = channels // group_size
    k = 1 << nbits
    luts = np.zeros((groups, k), dtype=w.dtype)
    indices = np.empty(moved.shape, dtype=np.uint8)
    for g in range(groups):
        rows = slice(g * group_size, (g + 1) * group_size)
        luts[g], flat_idx = palettize_flat(moved[rows], nbits)
        indices[rows] = flat_idx.reshape(moved[rows].shape)
    lut_shape = [1] * (w.ndim + 2)
    lut_shape[channel_axis] = groups
    lut_shape[-2] = k
    return luts.reshape(lut_shape), np.moveaxis(indices, 0, channel_axis)


def dense_from_lut(lut: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Decompress (lut, indices) from `palettize_array` (scalar LUTs only)."""
    reps = [s // l for s, l in zip(indices.shape, lut.shape[:-2])]
    table = lut[..., 0]  # drop vector dim
    out = np.empty(indices.shape, dtype=lut.dtype)
    for pos in np.ndindex(*lut.shape[:-2]):
        block = tuple(slice(p * r, (p + 1) * r) for p, r in zip(pos, reps))
        out[block] = table[pos][indices[block]]
    return out
