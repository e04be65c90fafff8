"""RI-Tracker: links per-frame mask proposals by re-id embedding distance (supplementary Sec. III).

As the seed: a linear assignment on the Euclidean distance between the re-id embeddings of the current
proposals and those of the tracks. The seed matched consecutive frames only; here a track not seen for
up to ``max_gap`` frames stays matchable, so a short full occlusion is bridged. Matching is a cascade
by age (as DeepSORT's): first the tracks seen in the previous frame (the seed's step), then the
remaining proposals against tracks unseen for 1, 2, ... ``max_gap`` frames, so a recently seen track is
never taken over by an older one. A track's embedding is that of its latest proposal. The re-id
embeddings come from the caller (any network), one ``[D]`` vector per proposal.

Defaults assume L2-normalised embeddings (distances in [0, 2]): ``max_distance=1.0`` (cosine similarity
>= 0.5) and ``max_gap=5`` frames (~0.2 s at DAVIS' 24 fps). Both are to be tuned per re-id network.
"""

from __future__ import annotations

import numpy as np

from stemseg_jax.tracking.assign import linear_assign
from stemseg_jax.tracking.proposals import FrameProposals


def _euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[n, D]``, ``[m, D]`` -> ``[n, m]`` float64 distances (direct differences: exact for near-equal vectors)."""
    return np.sqrt(((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(axis=-1))


class RITracker:
    """Online re-id tracker.

    Args:
      max_distance: the largest embedding distance that links a proposal to a track.
      max_gap: frames a track may go unseen and still be matched (0: consecutive frames only, the seed).
      min_score: proposals scoring below it are not tracked (id -1).
    """

    def __init__(self, max_distance: float = 1.0, max_gap: int = 5, min_score: float = 0.0):
        if not max_distance >= 0:
            raise ValueError(f"RITracker: max_distance must be >= 0, got {max_distance}")
        if int(max_gap) != max_gap or max_gap < 0:
            raise ValueError(f"RITracker: max_gap must be a non-negative integer, got {max_gap}")
        self.max_distance = float(max_distance)
        self.max_gap = int(max_gap)
        self.min_score = float(min_score)
        self._next_id = 0
        self._frame = -1
        self._dim: int | None = None
        self._tracks: dict[int, tuple[np.ndarray, int]] = {}  # id -> (embedding [D], last frame seen)

    @property
    def num_tracks(self) -> int:
        """How many track ids have been handed out (ids are 0 .. num_tracks - 1)."""
        return self._next_id

    def update(self, props: FrameProposals, embeddings: np.ndarray) -> np.ndarray:
        """Track ids ``[n] int32`` of this frame's proposals (-1: below ``min_score``); ids are never reused."""
        self._frame += 1
        emb = np.asarray(embeddings, np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(props):
            raise ValueError(f"RITracker: embeddings must be [n, D] for the {len(props)} proposals, got {emb.shape}")
        if len(props) and not np.isfinite(emb).all():
            raise ValueError("RITracker: embeddings hold NaN or inf")
        if self._dim is not None and emb.shape[0] and emb.shape[1] != self._dim:
            raise ValueError(f"RITracker: embeddings of dimension {emb.shape[1]}, earlier frames had {self._dim}")
        if emb.shape[0]:
            self._dim = emb.shape[1]
        # Tracks unseen for more than max_gap frames are gone for good.
        self._tracks = {k: v for k, v in self._tracks.items() if self._frame - v[1] - 1 <= self.max_gap}
        ids = np.full(len(props), -1, np.int32)
        unmatched = [int(i) for i in np.flatnonzero(props.scores >= self.min_score)]
        for gap in range(self.max_gap + 1):
            track_ids = [k for k, (_, last) in self._tracks.items() if self._frame - last - 1 == gap]
            if not unmatched or not track_ids:
                continue
            cost = _euclidean(emb[unmatched], np.stack([self._tracks[k][0] for k in track_ids]))
            pairs = linear_assign(cost, self.max_distance)
            for i, j in pairs:
                ids[unmatched[i]] = track_ids[j]
            taken = {unmatched[i] for i, _ in pairs}
            unmatched = [i for i in unmatched if i not in taken]
        for i in unmatched:
            ids[i] = self._next_id
            self._next_id += 1
        for i in np.flatnonzero(ids >= 0):
            self._tracks[int(ids[i])] = (emb[i].copy(), self._frame)
        return ids


__all__ = ["RITracker"]
