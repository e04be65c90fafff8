"""Mask overlap and gated linear assignment, shared by the trackers."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def _pack(masks: np.ndarray) -> np.ndarray:
    """``[n, H, W] bool`` -> ``[n, ceil(H * W / 64)] uint64``, 64 pixels per word (zero-padded)."""
    n = masks.shape[0]
    packed = np.packbits(masks.reshape(n, -1), axis=1)
    pad = -packed.shape[1] % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of masks: ``a [n, H, W]``, ``b [m, H, W]`` bool -> ``[n, m] float64`` (0 for two empty masks).

    Exact integer counts from bit-packed masks (64 pixels per word, ``np.bitwise_count``). Measured on
    20 x 20 box masks of 480x854 on this project's CPU machine: 9 ms, against 37 ms for pycocotools' RLE
    iou including the encoding and 126 ms for a float32 matmul of the flattened masks (100 x 100: 0.18 s
    against 3.6 s for the matmul).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"mask_iou: masks must be [n, H, W] and [m, H, W] of one size, got {a.shape} and {b.shape}")
    n, m = a.shape[0], b.shape[0]
    if n == 0 or m == 0:
        return np.zeros((n, m), np.float64)
    pa, pb = _pack(a.astype(bool, copy=False)), _pack(b.astype(bool, copy=False))
    # One row of a at a time keeps the temporary at [m, words] instead of [n, m, words].
    inter = np.stack([np.bitwise_count(row & pb).sum(axis=1, dtype=np.int64) for row in pa])
    area_a = np.bitwise_count(pa).sum(axis=1, dtype=np.int64)
    area_b = np.bitwise_count(pb).sum(axis=1, dtype=np.int64)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def linear_assign(cost: np.ndarray, max_cost: float) -> list[tuple[int, int]]:
    """Minimum-cost one-to-one matching of rows to columns, pairs with ``cost > max_cost`` left unmatched.

    ``cost [n, m]``; entries above ``max_cost`` or not finite (NaN, inf: "impossible") are gated out
    before solving (``scipy.optimize.linear_sum_assignment``), with a penalty larger than any sum of
    allowed costs, so the matching first maximises the number of allowed pairs, then minimises their
    cost. Returns ``[(i, j), ...]`` sorted by ``i``.
    """
    cost = np.asarray(cost, np.float64)
    if cost.ndim != 2:
        raise ValueError(f"linear_assign: cost must be [n, m], got shape {cost.shape}")
    if cost.size == 0:
        return []
    allowed = np.isfinite(cost) & (cost <= max_cost)
    if not allowed.any():
        return []
    span = np.abs(cost[allowed]).max()
    penalty = (span + 1.0) * (min(cost.shape) + 1) * 2.0
    rows, cols = linear_sum_assignment(np.where(allowed, cost, penalty))
    return [(int(i), int(j)) for i, j in zip(rows, cols) if allowed[i, j]]


__all__ = ["linear_assign", "mask_iou"]
