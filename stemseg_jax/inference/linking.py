"""Linking per-clip clusters into video tracks (spec §6.5, the official ``OnlineChainer``).

Clips arrive in order. A clip's clusters are matched to the existing tracks by the Hungarian algorithm
on ``1 - IoU`` over the foreground pixels of the frames it shares with the previous clip; every matched
pair is accepted (no IoU threshold, as official, unless ``min_iou`` > 0). The frames a clip shares with
its predecessor keep the labels they already have (first come, first served); only its new frames are
written, with matched clusters renamed to their track and unmatched ones starting new tracks.

Expectations on the caller:

* Clips come in the order of ``clip_schedule`` and their frame indices increase.
* Repeated frames of a short video's single clip are collapsed first (``collapse_repeated_frames``:
  the output of the last copy is kept), so a clip's frame indices are unique.
* ``labels`` is what ``cluster_clip`` returned for the clip: ``[T', h, w]`` with -1 for background and
  outliers and ``0..K-1`` for clusters. The foreground mask of a frame is the same in every clip that
  contains it (it comes from the averaged outputs), so the IoU over whole label maps equals the
  official IoU over foreground points.

Only per-frame label maps (``[h, w] int32``) are kept, never embeddings. Track ids are 0, 1, 2, ... in
order of creation, so "larger id" means "created later", as with the official ids (which may have gaps).
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

from stemseg_jax.results import LinkedTracks


def _iou_matrix(existing: np.ndarray, new: np.ndarray, existing_ids: np.ndarray, new_ids: np.ndarray) -> np.ndarray:
    """``[len(existing_ids), len(new_ids)]`` IoU between label sets given as flat int arrays of equal length."""
    a = np.searchsorted(existing_ids, existing)
    a = np.where((existing >= 0) & (a < len(existing_ids)), a, len(existing_ids))
    b = np.searchsorted(new_ids, new)
    b = np.where((new >= 0) & (b < len(new_ids)), b, len(new_ids))
    joint = np.bincount(a * (len(new_ids) + 1) + b, minlength=(len(existing_ids) + 1) * (len(new_ids) + 1))
    joint = joint.reshape(len(existing_ids) + 1, len(new_ids) + 1).astype(np.float64)
    inter = joint[:-1, :-1]
    union = joint[:-1, :].sum(1)[:, None] + joint[:, :-1].sum(0)[None, :] - inter
    return inter / np.maximum(union, 1.0)


class TrackChainer:
    """Online chaining of per-clip cluster labels into tracks (official ``OnlineChainer``).

    Args:
      num_frames: frames in the video.
      min_iou: matched pairs with an IoU below this start a new track instead; 0 (the default)
        accepts every Hungarian match, as the official code does.
    """

    def __init__(self, num_frames: int, min_iou: float = 0.0):
        if num_frames <= 0:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        self.num_frames = int(num_frames)
        self.min_iou = float(min_iou)
        self._frames: list[np.ndarray | None] = [None] * self.num_frames
        self._previous_clip: list[int] = []
        self._next_id = 0
        self._pixel_counts: dict[int, int] = {}
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}

    def add_clip(self, frame_indices, labels) -> dict[int, int]:
        """Adds one clip's clustering.

        Args:
          frame_indices: the clip's ``T'`` unique, increasing video frame indices.
          labels: ``[T', h, w]`` int cluster labels (-1 none).

        Returns:
          cluster label -> track id for every cluster with pixels in the clip (clusters present only in
          the shared frames and left unmatched map to -1: they are dropped, as official).
        """
        frames = [int(f) for f in frame_indices]
        labels = np.asarray(labels)
        if labels.ndim != 3 or labels.shape[0] != len(frames):
            raise ValueError(f"labels must be [T', h, w] with T' = {len(frames)} frames, got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if any(b <= a for a, b in zip(frames, frames[1:])):
            raise ValueError(f"clip frame indices must be unique and increasing (collapse repeated frames first), "
                             f"got {frames}")
        if frames[0] < 0 or frames[-1] >= self.num_frames:
            raise ValueError(f"clip frame indices {frames} outside the video's {self.num_frames} frames")
        shape = next((f.shape for f in self._frames if f is not None), labels.shape[1:])
        if labels.shape[1:] != shape:
            raise ValueError(f"clip label maps are {labels.shape[1:]}, earlier clips had {shape}")

        shared = sorted(set(frames) & set(self._previous_clip))
        fresh = [j for j, t in enumerate(frames) if t not in shared]
        for j in fresh:
            if self._frames[frames[j]] is not None:
                raise ValueError(f"frame {frames[j]} was already written by an earlier clip but is not shared with "
                                 f"the previous clip {self._previous_clip}")

        clusters = np.unique(labels[labels >= 0])
        mapping = {int(c): -1 for c in clusters}
        if shared:
            positions = [frames.index(t) for t in shared]
            existing = np.concatenate([self._frames[t].ravel() for t in shared])
            new = labels[positions].ravel().astype(np.int64)
            existing_ids = np.unique(existing[existing >= 0])
            new_ids = np.unique(new[new >= 0])
            if len(existing_ids) and len(new_ids):
                iou = _iou_matrix(existing, new, existing_ids, new_ids)
                rows, cols = scipy.optimize.linear_sum_assignment(1.0 - iou)
                for r, c in zip(rows, cols):
                    if iou[r, c] >= self.min_iou:
                        mapping[int(new_ids[c])] = int(existing_ids[r])
        # Unmatched clusters become new tracks in cluster order, so ids stay in order of creation.
        present_in_fresh = set(np.unique(labels[fresh][labels[fresh] >= 0]).tolist()) if fresh else set()
        for c in clusters.tolist():
            if mapping[c] < 0 and c in present_in_fresh:
                mapping[c] = self._next_id
                self._next_id += 1

        lut_offset = 1  # index 0 of the lookup table is label -1
        lut = np.full(int(clusters.max()) + 1 + lut_offset if len(clusters) else 1, -1, np.int32)
        for c, track in mapping.items():
            lut[c + lut_offset] = track
        for j in fresh:
            self._write_frame(frames[j], lut[np.maximum(labels[j], -1) + lut_offset])
        self._previous_clip = frames
        return mapping

    def frame_labels(self, t: int) -> np.ndarray:
        """``[h, w]`` track ids of frame ``t``: final once a clip containing it has been added."""
        if self._frames[t] is None:
            raise ValueError(f"frame {t} has not been covered by a clip yet")
        return self._frames[t]

    def _write_frame(self, t: int, frame_labels: np.ndarray) -> None:
        self._frames[t] = frame_labels.astype(np.int32)
        ids, counts = np.unique(frame_labels[frame_labels >= 0], return_counts=True)
        for track, count in zip(ids.tolist(), counts.tolist()):
            self._pixel_counts[track] = self._pixel_counts.get(track, 0) + count
            self._first[track] = min(self._first.get(track, t), t)
            self._last[track] = max(self._last.get(track, t), t)

    def result(self) -> LinkedTracks:
        """The linked tracks; every frame must have been covered by a clip."""
        missing = [t for t, f in enumerate(self._frames) if f is None]
        if missing:
            raise ValueError(f"frames {missing[:10]}{'...' if len(missing) > 10 else ''} were never covered by a clip")
        order = sorted(self._first, key=lambda k: (self._first[k], k))
        return LinkedTracks(
            label_maps=np.stack(self._frames),
            pixel_counts={k: self._pixel_counts[k] for k in order},
            first_frame={k: self._first[k] for k in order},
            last_frame={k: self._last[k] for k in order},
            order=order,
        )
