"""Training-sample arithmetic: clip sampling from videos (spec §5.3) and dataset mixtures (§5.2).

Everything here works on frame *indices* and instance-id sets carried by the records, never on
pixels, so a plan for 300k training samples is built in seconds and stored as a few NumPy arrays.

Videos are handled through ``SequenceView``s: the frames of a record that survive filtering, as
indices into the record's own frame list. Filtering (zero-instance frames) and KITTI sequence
splitting therefore never rewrite a record, and the record's lazy mask decoder keeps using its own
frame numbering.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

# KITTI-MOTS: this many consecutive frames without a car or pedestrian split a sequence (spec §5.3).
KITTI_SPLIT_GAP = 6
SUBSAMPLE_MODES = ("random", "first")


@dataclasses.dataclass(frozen=True)
class SequenceView:
    """The usable frames of one video record.

    Attributes:
      record_index: index of the record in its dataset's record list.
      frames: ``[L]`` int64, indices into the record's frames, increasing.
      name: the record's name, with ``_k`` appended for the k-th piece of a split KITTI sequence.
    """

    record_index: int
    frames: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.frames)


def nonempty_frame_view(record, record_index: int) -> SequenceView:
    """Drops the frames with no annotated instance (``filter_zero_instance_frames``, DAVIS and YouTube-VIS).

    The remaining frames are simply concatenated, so a clip may jump over the removed ones.
    """
    frames = np.array([t for t, ids in enumerate(record.frame_instances) if ids], dtype=np.int64)
    return SequenceView(record_index, frames, record.name)


def kitti_split_views(record, record_index: int, gap: int = KITTI_SPLIT_GAP) -> list[SequenceView]:
    """Splits a KITTI-MOTS sequence at runs of ``gap`` empty frames (spec §5.3).

    Empty frames (no car or pedestrian; ignore regions are not instances) are always dropped. When
    the ``gap``-th consecutive empty frame is reached, the frames collected so far become a piece named
    ``<name>_<k>`` (k from 1); shorter runs are skipped without splitting.
    """
    views, current, run, piece = [], [], 0, 1
    for t, ids in enumerate(record.frame_instances):
        if ids:
            run = 0
            current.append(t)
            continue
        run += 1
        if run == gap and current:
            views.append(SequenceView(record_index, np.asarray(current, np.int64), f"{record.name}_{piece}"))
            piece += 1
            current = []
    if current:
        views.append(SequenceView(record_index, np.asarray(current, np.int64), f"{record.name}_{piece}"))
    return views


def clip_frame_indices(length: int, num_frames: int, frame_gap: int, rng: np.random.Generator) -> np.ndarray:
    """Samples one clip's positions in a sequence of ``length`` frames (spec §5.3).

    span = min(frame_gap, length - 1); start ~ U{0, ..., length - span - 1}; the positions are
    ``round(linspace(start, start + span, num_frames))`` (NumPy rounds half to even, like the official
    ``np.round``). Returns ``[num_frames]`` int64, strictly increasing.
    """
    if length < 1:
        raise ValueError("cannot sample a clip from an empty sequence")
    span = min(frame_gap, length - 1)
    start = int(rng.integers(0, length - span))
    idx = np.round(np.linspace(start, start + span, num_frames)).astype(np.int64)
    if len(np.unique(idx)) != num_frames:
        raise ValueError(
            f"a clip of {num_frames} frames does not fit in a span of {span} frames "
            f"(sequence length {length}, frame_gap {frame_gap}): frame indices would repeat"
        )
    return idx


def allocate_clip_quotas(lengths: Sequence[int], quota: int) -> np.ndarray:
    """Clips per sequence, proportional to its length: ``max(1, ceil(len / total * quota))`` (spec §5.3).

    The sum is >= ``quota`` (the caller subsamples the surplus away).
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.size == 0:
        return np.zeros((0,), np.int64)
    total = lengths.sum()
    return np.maximum(1, np.ceil(lengths / total * quota)).astype(np.int64)


def sample_video_clips(
    views: Sequence[SequenceView], quota: int, num_frames: int, frame_gap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pre-samples ``quota`` clips from a video dataset (spec §5.3).

    Sequences with ``len <= frame_gap + 1`` are skipped. Every remaining sequence gets its
    proportional share of clips, the surplus created by rounding up is removed by a uniform random
    subsample, and the clips are shuffled.

    Returns:
      ``(record_index [quota] int64, frames [quota, num_frames] int64)``: frame indices are in the
      records' own numbering (the views' filtering already applied).
    """
    usable = [v for v in views if len(v) > frame_gap + 1]
    if quota <= 0:
        return np.zeros((0,), np.int64), np.zeros((0, num_frames), np.int64)
    if not usable:
        raise ValueError(
            f"no sequence is longer than frame_gap + 1 = {frame_gap + 1} frames "
            f"({len(views)} sequences before filtering); cannot sample clips"
        )
    counts = allocate_clip_quotas([len(v) for v in usable], quota)
    records, frames = [], []
    for view, count in zip(usable, counts):
        for _ in range(count):
            records.append(view.record_index)
            frames.append(view.frames[clip_frame_indices(len(view), num_frames, frame_gap, rng)])
    keep = rng.permutation(len(records))[:quota]
    return np.asarray(records, np.int64)[keep], np.asarray(frames, np.int64).reshape(-1, num_frames)[keep]


def mixture_quotas(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """``round(w * total)`` samples per dataset (spec §5.2), with weights normalised to sum to 1."""
    if not weights:
        raise ValueError("config.data.datasets is empty: no training data")
    bad = {k: w for k, w in weights.items() if not w > 0}
    if bad:
        raise ValueError(f"dataset weights must be > 0, got {bad}")
    norm = sum(weights.values())
    return {name: int(round(w / norm * total)) for name, w in weights.items()}


def resample_to_quota(num_items: int, quota: int, rng: np.random.Generator, mode: str = "random") -> np.ndarray:
    """Indices of a dataset of ``num_items`` samples filling a quota of ``quota`` (spec §5.2).

    Larger than the quota: a seeded uniform subsample without replacement (``mode="random"``), or the
    official behaviour of taking the first ``quota`` items (``mode="first"``, a QUIRK). Smaller: every
    item ``floor(quota / num_items)`` times, then the remainder at evenly spaced indices
    ``round(linspace(0, num_items - 1, remainder))``. Returns ``[quota]`` int64 in dataset order (the
    global shuffle happens later).
    """
    if mode not in SUBSAMPLE_MODES:
        raise ValueError(f"config.data.subsample must be one of {SUBSAMPLE_MODES}, got {mode!r}")
    if num_items <= 0:
        raise ValueError("cannot fill a quota from an empty dataset")
    if quota <= num_items:
        if mode == "first":
            return np.arange(quota, dtype=np.int64)
        return np.sort(rng.choice(num_items, size=quota, replace=False)).astype(np.int64)
    reps = quota // num_items
    rem = quota - reps * num_items
    rem_idx = np.round(np.linspace(0, num_items - 1, rem)).astype(np.int64)
    return np.concatenate([np.tile(np.arange(num_items, dtype=np.int64), reps), rem_idx])
