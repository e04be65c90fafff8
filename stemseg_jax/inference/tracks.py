"""Per-benchmark track selection, scores, categories and full-resolution masks (spec §6.6-6.8).

Every benchmark takes the linked label maps (``LinkedTracks``, at the clustering resolution) and
produces exactly what the evaluation package's writers take:

* DAVIS: ``[T, H, W] uint8`` label maps for ``write_davis_sequence``.
* YouTube-VIS: result dicts ``{video_id, category_id, score, segmentations}`` for ``write_ytvis_results``.
* KITTI-MOTS: ``(frame, track_id, class_id, rle)`` detections for ``write_kitti_mots_sequence``.

Masks are compressed COCO RLEs (pycocotools) as soon as they exist at full resolution so that a long
video never holds all its full-resolution masks at once.

The mask chain (``masks_to_original``) follows the official output code: binary mask at the clustering
resolution -> bilinear x``scale`` (half-pixel, ``F.interpolate(align_corners=False)``) -> crop the
bottom/right padding to the resized image dims -> bilinear resize to the original size -> ``> 0.5``.
OpenCV's INTER_LINEAR would do each step but is slow on many channels, so the linear part of the chain
is folded into one sparse matrix per axis (checked against PyTorch's ``F.interpolate`` in the tests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse
from pycocotools import mask as mask_utils

from stemseg_jax.evaluation import writers
from stemseg_jax.inference.linking import LinkedTracks

KITTI_CAR, KITTI_PEDESTRIAN = 1, 2
KITTI_OVERLAP_RULES = ("latest_track", "longest_lifetime")
# Written ids are class * 1000 + id, so a sequence holds at most 999 tracks (the official 1000 would
# collide with the next class's id 0).
KITTI_MAX_TRACKS = 999


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


def _encode(masks: np.ndarray) -> list[dict]:
    """``[K, H, W]`` bool -> compressed RLEs ``{"size": [H, W], "counts": str}`` (the writers' format)."""
    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def _ranked(keys: dict[int, int], order: Sequence[int], descending: bool) -> list[int]:
    """Track ids of ``order`` sorted by ``keys``; Python's stable sort keeps ``order`` among ties."""
    return sorted(order, key=lambda k: keys[k], reverse=descending)


def _frame_masks(label_map: np.ndarray, track_ids: Sequence[int], **chain) -> np.ndarray:
    """Full-resolution masks ``[K, H, W]`` of ``track_ids`` in one frame; absent tracks skip the chain."""
    masks = np.zeros((len(track_ids), *chain["original_hw"]), bool)
    low = label_map[None] == np.asarray(track_ids, np.int64).reshape(-1, 1, 1)
    active = np.flatnonzero(low.any(axis=(1, 2)))
    if len(active):
        masks[active] = masks_to_original(low[active], **chain)
    return masks


# ----------------------------------------------------------------------------------------------- DAVIS
def select_tracks_davis(linked: LinkedTracks, *, scale: int, resized_hw, original_hw,
                        max_tracks: int = 20) -> tuple[np.ndarray, list[int]]:
    """DAVIS unsupervised output (spec §6.6).

    The ``max_tracks`` longest-lived tracks (ties: first appearance) are painted in rank order, so a
    shorter-lived track overwrites a longer-lived one where they overlap.

    Returns:
      ``(label_maps [T, H, W] uint8 with values 0..K, kept track ids in rank order)``.
    """
    if not 0 < max_tracks < 256:
        raise ValueError(f"DAVIS max_tracks must be in 1..255 (uint8 label maps), got {max_tracks}")
    kept = _ranked(linked.lifetimes, linked.order, descending=True)[:max_tracks]
    chain = dict(scale=scale, resized_hw=resized_hw, original_hw=tuple(int(v) for v in original_hw))
    out = np.zeros((linked.num_frames, *chain["original_hw"]), np.uint8)
    for t in range(linked.num_frames):
        masks = _frame_masks(linked.label_maps[t], kept, **chain)
        for rank, mask in enumerate(masks, start=1):
            out[t][mask] = rank
    return out, kept


# ----------------------------------------------------------------------------------------------- YouTube-VIS
def select_tracks_ytvis(linked: LinkedTracks, class_logits, *, video_id: int, scale: int, resized_hw,
                        original_hw, max_tracks: int = 10) -> list[dict]:
    """YouTube-VIS results of one video (spec §6.7).

    Keeps the ``max_tracks`` longest-lived tracks. Score = the track's pixel count / the largest pixel
    count among the kept tracks. Category = argmax + 1 of the mean class logits over the track's pixels
    with the background channel 0 dropped (the official softmax before the argmax changes nothing).

    Args:
      class_logits: per frame ``[h, w, C]`` averaged semantic logits at the label maps' resolution, as a
        ``[T, h, w, C]`` array or any sequence of ``T`` frames (channel 0 = background).
      video_id: the dataset's video id.

    Returns:
      a list of ``{video_id, category_id, score, segmentations}`` (one compressed RLE per frame, empty
      frames included), ready for ``write_ytvis_results``; empty when no track exists.
    """
    if len(class_logits) != linked.num_frames:
        raise ValueError(f"video {video_id}: class logits for {len(class_logits)} frames, tracks for "
                         f"{linked.num_frames}")
    kept = _ranked(linked.lifetimes, linked.order, descending=True)[:max_tracks]
    if not kept:
        return []
    chain = dict(scale=scale, resized_hw=resized_hw, original_hw=tuple(int(v) for v in original_hw))
    ids = np.asarray(kept, np.int64)
    logit_sums = None
    areas = np.zeros(len(kept), np.float64)
    segmentations = [[] for _ in kept]
    for t in range(linked.num_frames):
        label_map = linked.label_maps[t]
        logits = np.asarray(class_logits[t])
        if logits.shape[:2] != label_map.shape:
            raise ValueError(f"video {video_id}, frame {t}: class logits {logits.shape} do not match the label map "
                             f"{label_map.shape}")
        if logit_sums is None:
            logit_sums = np.zeros((len(kept), logits.shape[-1] - 1), np.float64)
        low = label_map[None] == ids[:, None, None]
        for i in np.flatnonzero(low.any(axis=(1, 2))):
            logit_sums[i] += logits[low[i]][:, 1:].sum(axis=0, dtype=np.float64)
            areas[i] += low[i].sum()
        for i, rle in enumerate(_encode(_frame_masks(label_map, kept, **chain))):
            segmentations[i].append(rle)
    counts = np.asarray([linked.pixel_counts[k] for k in kept], np.float64)
    categories = np.argmax(logit_sums / np.maximum(areas, 1.0)[:, None], axis=1) + 1
    return [
        {"video_id": int(video_id), "category_id": int(categories[i]), "score": float(counts[i] / counts.max()),
         "segmentations": segmentations[i]}
        for i in range(len(kept))
    ]


# ----------------------------------------------------------------------------------------------- KITTI-MOTS
@dataclasses.dataclass
class KittiTracks:
    """Kept KITTI-MOTS tracks: ``track_ids[i]`` (linked id) is written as id ``i + 1`` with ``class_ids[i]``."""

    track_ids: list[int]
    class_ids: list[int]


def select_tracks_kitti(linked: LinkedTracks, class_maps, *, max_tracks: int = 1000) -> KittiTracks:
    """KITTI-MOTS track selection and class vote (spec §6.8).

    Keeps the ``max_tracks`` largest tracks by pixel count, then orders them by lifetime ascending
    (stable); that order gives the written ids 1..K. The class is a vote of the argmax class map over
    the track's pixels in every frame, background (0) ignored; pedestrian needs strictly more votes
    than car (ties -> car, as official).

    Args:
      class_maps: per frame ``[h, w]`` int argmax of the averaged class logits (0 bg, 1 car, 2 pedestrian),
        as a ``[T, h, w]`` array or a sequence of ``T`` frames.
    """
    if len(class_maps) != linked.num_frames:
        raise ValueError(f"class maps for {len(class_maps)} frames, tracks for {linked.num_frames}")
    by_size = _ranked(linked.pixel_counts, linked.order, descending=True)[:max_tracks]
    kept = _ranked(linked.lifetimes, by_size, descending=False)
    votes = np.zeros((len(kept), 3), np.int64)
    if kept:
        index = np.full(max(linked.order) + 2, -1, np.int64)  # linked id + 1 -> kept position, -1 if dropped
        index[np.asarray(kept) + 1] = np.arange(len(kept))
        for t in range(linked.num_frames):
            classes = np.asarray(class_maps[t])
            if classes.shape != linked.label_maps[t].shape:
                raise ValueError(f"frame {t}: class map {classes.shape} does not match the label map "
                                 f"{linked.label_maps[t].shape}")
            track_index = index[linked.label_maps[t] + 1]
            sel = (track_index >= 0) & (classes >= 1) & (classes <= 2)
            np.add.at(votes, (track_index[sel], classes[sel]), 1)
    class_ids = [KITTI_PEDESTRIAN if v[KITTI_PEDESTRIAN] > v[KITTI_CAR] else KITTI_CAR for v in votes]
    return KittiTracks(track_ids=kept, class_ids=class_ids)


def kitti_detections(linked: LinkedTracks, selection: KittiTracks, *, scale: int, resized_hw, original_hw,
                     overlap: str = "latest_track") -> Iterator[tuple[int, int, int, dict]]:
    """Yields ``(frame, track_id 1..K, class_id, rle)`` for every kept track with pixels in a frame.

    Overlaps between the full-resolution masks of a frame go to one track per pixel:
    ``"latest_track"`` (default, the official code) to the track created latest (largest linked id);
    ``"longest_lifetime"`` to the longest-lived one, as the official comment intends (the spec offers
    no measured alternative, so the default stays the official behaviour). A track whose pixels are
    all taken by others still yields an empty RLE, as official.
    """
    if overlap not in KITTI_OVERLAP_RULES:
        raise ValueError(f"overlap must be one of {KITTI_OVERLAP_RULES}, got {overlap!r}")
    chain = dict(scale=scale, resized_hw=resized_hw, original_hw=tuple(int(v) for v in original_hw))
    kept = np.asarray(selection.track_ids, np.int64)
    if not len(kept):
        return
    # Priority per kept track: the larger value wins a contested pixel.
    priority = kept if overlap == "latest_track" else np.arange(len(kept))
    position = np.full(int(max(kept.max(), max(linked.order, default=0))) + 2, -1, np.int64)
    position[kept + 1] = np.arange(len(kept))
    for t in range(linked.num_frames):
        label_map = linked.label_maps[t]
        present = position[np.unique(label_map[label_map >= 0]) + 1]
        active = np.sort(present[present >= 0])
        if not len(active):
            continue
        low = label_map[None] == kept[active][:, None, None]
        owned = resolve_overlaps(masks_to_original(low, **chain), priority[active])
        for i, rle in zip(active, _encode(owned)):
            yield t, int(i) + 1, selection.class_ids[i], rle


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


# ----------------------------------------------------------------------------------------------- writing
def write_davis_outputs(results_dir: str, seq: str, frame_names, linked: LinkedTracks, *, scale: int, resized_hw,
                        original_hw, max_tracks: int = 20) -> list[str]:
    """``select_tracks_davis`` + ``evaluation.writers.write_davis_sequence``; returns the written paths."""
    label_maps, _ = select_tracks_davis(linked, scale=scale, resized_hw=resized_hw, original_hw=original_hw,
                                        max_tracks=max_tracks)
    return writers.write_davis_sequence(results_dir, seq, frame_names, label_maps)


def write_kitti_outputs(results_dir: str, seq_id, linked: LinkedTracks, class_maps, *, scale: int, resized_hw,
                        original_hw, max_tracks: int = 1000, overlap: str = "latest_track") -> str:
    """``select_tracks_kitti`` + ``kitti_detections`` + ``write_kitti_mots_sequence``; returns the file path.

    ``max_tracks`` is capped at 999 (see ``KITTI_MAX_TRACKS``). A sequence without tracks gets an empty
    file (the official code raises instead).
    """
    selection = select_tracks_kitti(linked, class_maps, max_tracks=min(int(max_tracks), KITTI_MAX_TRACKS))
    detections = kitti_detections(linked, selection, scale=scale, resized_hw=resized_hw, original_hw=original_hw,
                                  overlap=overlap)
    return writers.write_kitti_mots_sequence(results_dir, seq_id, detections)
