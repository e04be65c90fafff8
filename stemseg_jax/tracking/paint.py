"""From tracked proposals to what a method returns: per-frame label maps and per-track class scores."""

from __future__ import annotations

import numpy as np

from stemseg_jax.tracking.proposals import FrameProposals


def paint_tracks(props: FrameProposals, ids: np.ndarray) -> np.ndarray:
    """``[H, W] int32`` label map of one frame: the track id per pixel, -1 for none.

    Proposals are painted from the lowest score to the highest, so where masks overlap the higher-scoring
    one wins (equal scores: the lower index wins). Proposals with id < 0 are not painted.
    """
    ids = np.asarray(ids).reshape(-1)
    if ids.shape[0] != len(props):
        raise ValueError(f"paint_tracks: {ids.shape[0]} ids for {len(props)} proposals")
    label = np.full(props.hw, -1, np.int32)
    index = np.arange(len(props))
    for k in np.lexsort((-index, props.scores)):  # ascending score, then descending index: the winner goes last
        if ids[k] >= 0:
            label[props.masks[k]] = ids[k]
    return label


class TrackClassVotes:
    """Per-track class scores from the (category, score) of the track's proposals.

    ``add(props, ids)`` per frame; ``result()`` gives ``{track id -> [num_classes] float64}`` with, at index
    c, the mean score of the track's proposals of category c (0 where it has none; index 0, background,
    stays 0). These are ``results.VideoResult.track_classes`` for proposal-based methods.
    """

    def __init__(self, num_classes: int):
        if int(num_classes) < 2:
            raise ValueError(f"TrackClassVotes: num_classes must be >= 2 (background + 1), got {num_classes}")
        self.num_classes = int(num_classes)
        self._sums: dict[int, np.ndarray] = {}
        self._counts: dict[int, np.ndarray] = {}

    def add(self, props: FrameProposals, ids: np.ndarray) -> None:
        ids = np.asarray(ids).reshape(-1)
        if ids.shape[0] != len(props):
            raise ValueError(f"TrackClassVotes: {ids.shape[0]} ids for {len(props)} proposals")
        if len(props) and props.categories.max() >= self.num_classes:
            raise ValueError(f"TrackClassVotes: category {int(props.categories.max())} >= num_classes "
                             f"{self.num_classes}")
        for k in np.flatnonzero(ids >= 0):
            track, cat = int(ids[k]), int(props.categories[k])
            self._sums.setdefault(track, np.zeros(self.num_classes, np.float64))[cat] += float(props.scores[k])
            self._counts.setdefault(track, np.zeros(self.num_classes, np.int64))[cat] += 1

    def result(self) -> dict[int, np.ndarray]:
        return {k: s / np.maximum(self._counts[k], 1) for k, s in self._sums.items()}


__all__ = ["TrackClassVotes", "paint_tracks"]
