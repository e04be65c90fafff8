"""What every video segmentation method returns and every benchmark consumes.

A method (``stemseg_jax.methods``) turns a video's frames into a ``VideoResult``: tracks as per-frame label
maps (``LinkedTracks``), per-track class scores, and the geometry that maps the label maps back to the
original frames. A benchmark (``stemseg_jax.benchmarks``) selects, scores and writes tracks from that
alone, so a new method plugs in without touching the benchmark rules. Pure NumPy: no model, no files.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# How a method summarises dense per-pixel class information into per-track class scores; each benchmark
# names the one its official rule uses (``Benchmark.class_mode``).
#   "mean_logits": the mean of the class logits over the track's pixels (YouTube-VIS, spec §6.7)
#   "pixel_votes": per class, the number of the track's pixels whose argmax is that class (KITTI-MOTS, §6.8)
CLASS_MODES = ("mean_logits", "pixel_votes")


@dataclasses.dataclass
class LinkedTracks:
    """The tracks of a whole video.

    Attributes:
      label_maps: ``[T, h, w] int32`` track id per pixel, -1 for none.
      pixel_counts: track id -> number of pixels over the video (at the label maps' resolution).
      first_frame, last_frame: track id -> first / last frame in which it has pixels.
      order: track ids in order of first appearance (by frame, then by id), the tie-break order of the
        official rankings (its dicts are filled in this order and Python's sort is stable).
    """

    label_maps: np.ndarray
    pixel_counts: dict[int, int]
    first_frame: dict[int, int]
    last_frame: dict[int, int]
    order: list[int]

    @property
    def lifetimes(self) -> dict[int, int]:
        """track id -> last frame - first frame (not + 1, as official)."""
        return {k: self.last_frame[k] - self.first_frame[k] for k in self.order}

    @property
    def num_frames(self) -> int:
        return int(self.label_maps.shape[0])


def linked_from_label_maps(label_maps: np.ndarray) -> LinkedTracks:
    """``LinkedTracks`` of ready-made ``[T, h, w]`` track label maps (-1 none), e.g. from a tracker."""
    label_maps = np.asarray(label_maps, np.int32)
    if label_maps.ndim != 3:
        raise ValueError(f"label maps must be [T, h, w], got shape {label_maps.shape}")
    counts: dict[int, int] = {}
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for t, frame in enumerate(label_maps):
        ids, n = np.unique(frame[frame >= 0], return_counts=True)
        for k, c in zip(ids.tolist(), n.tolist()):
            counts[k] = counts.get(k, 0) + c
            first.setdefault(k, t)
            last[k] = t
    order = sorted(first, key=lambda k: (first[k], k))
    return LinkedTracks(label_maps, {k: counts[k] for k in order}, {k: first[k] for k in order},
                        {k: last[k] for k in order}, order)


@dataclasses.dataclass
class VideoResult:
    """One video segmented by a method.

    Attributes:
      linked: the tracks, at ``1 / scale`` of the padded, resized network input.
      track_classes: track id -> class scores ``[C] float`` (index 0 background; larger = more likely), in
        the ``class_mode`` the benchmark asked for; None when the method predicts no classes.
      scale: label maps are at ``1 / scale`` of the padded network input (1 when they are at input size).
      resized_hw: the resized, unpadded network input size (``preprocessing.compute_resize_dims``).
      original_hw: the original frame size.
      timings: seconds per stage.
    """

    linked: LinkedTracks
    track_classes: dict[int, np.ndarray] | None
    scale: int
    resized_hw: tuple[int, int]
    original_hw: tuple[int, int]
    timings: dict

    @property
    def chain(self) -> dict:
        """The keyword arguments of ``benchmarks.masks.masks_to_original`` for this video's label maps."""
        return dict(scale=self.scale, resized_hw=tuple(self.resized_hw),
                    original_hw=tuple(int(v) for v in self.original_hw))


class TrackClassAccumulator:
    """Builds ``VideoResult.track_classes`` frame by frame from dense class information.

    ``add_frame(label_map, class_info)`` takes a frame's final track label map ``[h, w]`` and, for
    ``"mean_logits"``, the class logits ``[h, w, C]``, for ``"pixel_votes"`` the argmax class map ``[h, w]``.
    Sums run in float64 in frame order, so the result does not depend on how frames were batched.
    """

    def __init__(self, mode: str, num_classes: int):
        if mode not in CLASS_MODES:
            raise ValueError(f"class mode must be one of {CLASS_MODES}, got {mode!r}")
        self.mode = mode
        self.num_classes = int(num_classes)
        self._sums: dict[int, np.ndarray] = {}
        self._areas: dict[int, int] = {}

    def add_frame(self, label_map: np.ndarray, class_info: np.ndarray) -> None:
        label_map = np.asarray(label_map)
        class_info = np.asarray(class_info)
        if class_info.shape[:2] != label_map.shape:
            raise ValueError(f"class information {class_info.shape} does not match the label map {label_map.shape}")
        present = np.unique(label_map[label_map >= 0])
        if self.mode == "pixel_votes":
            keys = label_map.astype(np.int64) * self.num_classes + class_info
            fg = label_map >= 0
            combined, counts = np.unique(keys[fg], return_counts=True)
            for key, n in zip(combined.tolist(), counts.tolist()):
                track, cls = divmod(key, self.num_classes)
                votes = self._sums.setdefault(track, np.zeros(self.num_classes, np.float64))
                votes[cls] += n
            return
        for track in present.tolist():
            pixels = label_map == track
            total = self._sums.setdefault(track, np.zeros(class_info.shape[-1], np.float64))
            total += class_info[pixels].sum(axis=0, dtype=np.float64)
            self._areas[track] = self._areas.get(track, 0) + int(pixels.sum())

    def result(self) -> dict[int, np.ndarray]:
        if self.mode == "pixel_votes":
            return dict(self._sums)
        return {k: s / max(self._areas[k], 1) for k, s in self._sums.items()}


def track_class_scores(linked: LinkedTracks, class_info, mode: str, num_classes: int) -> dict[int, np.ndarray]:
    """``TrackClassAccumulator`` over a whole video: ``class_info`` holds one frame's class information per
    frame (``[T, h, w, C]`` logits or ``[T, h, w]`` class maps, or a sequence of them)."""
    if len(class_info) != linked.num_frames:
        raise ValueError(f"class information for {len(class_info)} frames, tracks for {linked.num_frames}")
    acc = TrackClassAccumulator(mode, num_classes)
    for label_map, info in zip(linked.label_maps, class_info):
        acc.add_frame(label_map, info)
    return acc.result()
