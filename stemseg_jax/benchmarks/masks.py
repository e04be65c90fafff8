"""Track label maps -> full-resolution masks, rankings and painting: what every benchmark's output shares.

The mask chain (``masks_to_original``) follows the official output code: binary mask at the clustering
resolution -> bilinear x``scale`` (half-pixel, ``F.interpolate(align_corners=False)``) -> crop the
bottom/right padding to the resized image dims -> bilinear resize to the original size -> ``> 0.5``.
OpenCV's INTER_LINEAR would do each step but is slow on many channels, so the linear part of the chain
is folded into one sparse matrix per axis (checked against PyTorch's ``F.interpolate`` in the tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse

from stemseg_jax.results import LinkedTracks


def _bilinear_matrix(n_out: int, n_in: int) -> scipy.sparse.csr_matrix:
    """``[n_out, n_in]`` half-pixel bilinear resampling (``F.interpolate(align_corners=False)``, no antialias)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    rows = np.concatenate([np.arange(n_out), np.arange(n_out)])
    weights = np.concatenate([1.0 - frac, frac])
    return scipy.sparse.csr_matrix((weights, (rows, np.concatenate([lo, hi]))), shape=(n_out, n_in))


def _chain_matrix(n_low: int, scale: int, n_resized: int, n_original: int) -> scipy.sparse.csr_matrix:
    """One axis of the mask chain as a matrix ``[n_original, n_low]``: x``scale``, crop, resize."""
    upsample = _bilinear_matrix(n_low * scale, n_low)[:n_resized]
    return (_bilinear_matrix(n_original, n_resized) @ upsample).astype(np.float32).tocsr()


def masks_to_original(masks, *, scale: int, resized_hw: tuple[int, int],
                      original_hw: tuple[int, int]) -> np.ndarray:
    """Brings binary masks from the clustering resolution to the original image (spec §6.6).

    The chain (bilinear x``scale``, crop the padding, bilinear resize, ``> 0.5``) is linear and separable
    up to the threshold, so each axis is one sparse matrix and a frame costs two sparse products instead
    of resizing ``K`` full-resolution float maps twice. Values that the official float32 chain puts
    within rounding of 0.5 may threshold differently.

    Args:
      masks: ``[K, h, w]`` bool, at the padded network input resolution divided by ``scale``.
      scale: 4 when clustering at 1/4 resolution, 1 when the embeddings were upsampled first.
      resized_hw: the resized, unpadded network input dims (``preprocessing.compute_resize_dims``).
      original_hw: the original frame dims.

    Returns:
      ``[K, H, W]`` bool.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [K, h, w], got shape {masks.shape}")
    k, h, w = masks.shape
    (rh, rw), (oh, ow) = (tuple(int(v) for v in resized_hw), tuple(int(v) for v in original_hw))
    if h * scale < rh or w * scale < rw:
        raise ValueError(f"masks of {h}x{w} upsampled x{scale} are smaller than the resized input {rh}x{rw}")
    if k == 0:
        return np.zeros((0, oh, ow), bool)
    rows, cols = _chain_matrix(h, scale, rh, oh), _chain_matrix(w, scale, rw, ow)
    x = np.asarray(masks.reshape(k * h, w).astype(np.float32) @ cols.T)  # [K*h, W]
    x = x.reshape(k, h, ow).transpose(1, 0, 2).reshape(h, k * ow)
    x = np.asarray(rows @ x)  # [H, K*W]
    return (x > 0.5).reshape(oh, k, ow).transpose(1, 0, 2)


def ranked(keys: dict[int, int], order: Sequence[int], descending: bool) -> list[int]:
    """Track ids of ``order`` sorted by ``keys``; Python's stable sort keeps ``order`` among ties."""
    return sorted(order, key=lambda k: keys[k], reverse=descending)


def frame_masks(label_map: np.ndarray, track_ids: Sequence[int], **chain) -> np.ndarray:
    """Full-resolution masks ``[K, H, W]`` of ``track_ids`` in one frame; absent tracks skip the chain."""
    masks = np.zeros((len(track_ids), *chain["original_hw"]), bool)
    low = label_map[None] == np.asarray(track_ids, np.int64).reshape(-1, 1, 1)
    active = np.flatnonzero(low.any(axis=(1, 2)))
    if len(active):
        masks[active] = masks_to_original(low[active], **chain)
    return masks


def longest_tracks(linked: LinkedTracks, max_tracks: int) -> list[int]:
    """The ``max_tracks`` longest-lived track ids (ties: first appearance), in rank order."""
    if not 0 < max_tracks < 256:
        raise ValueError(f"max_tracks must be in 1..255 (uint8 label maps), got {max_tracks}")
    return ranked(linked.lifetimes, linked.order, descending=True)[:max_tracks]


def paint_frame(label_map: np.ndarray, kept: Sequence[int], **chain) -> np.ndarray:
    """``[H, W] uint8`` full-resolution label map of one frame: track ``kept[i]`` painted as ``i + 1`` in rank
    order, so a later-ranked track overwrites an earlier one where their masks overlap."""
    chain = dict(chain, original_hw=tuple(int(v) for v in chain["original_hw"]))
    out = np.zeros(chain["original_hw"], np.uint8)
    for rank, mask in enumerate(frame_masks(label_map, kept, **chain), start=1):
        out[mask] = rank
    return out


def paint_longest_tracks(linked: LinkedTracks, max_tracks: int, **chain) -> tuple[np.ndarray, list[int]]:
    """Label maps of the ``max_tracks`` longest-lived tracks (``longest_tracks``), painted at full
    resolution (``paint_frame``).

    Returns:
      ``(label_maps [T, H, W] uint8 with values 0..K, kept track ids in rank order)``.
    """
    kept = longest_tracks(linked, max_tracks)
    return np.stack([paint_frame(linked.label_maps[t], kept, **chain) for t in range(linked.num_frames)]), kept


def resolve_overlaps(masks: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """``[K, H, W]`` bool masks -> disjoint masks: a contested pixel goes to the largest ``priority [K]``.

    With the bilinear chain, disjoint low-resolution masks interpolate to values summing to at most 1
    per pixel, so two of them exceed 0.5 together only through rounding; the rule rarely acts.
    """
    masks = np.asarray(masks, bool)
    contested = np.add.reduce(masks, axis=0, dtype=np.int32) > 1
    if not contested.any():
        return masks
    ys, xs = np.nonzero(contested)
    claims = np.where(masks[:, ys, xs], np.asarray(priority, np.int64)[:, None], -1)
    masks = masks.copy()
    masks[:, ys, xs] = False
    masks[np.argmax(claims, axis=0), ys, xs] = True
    return masks
