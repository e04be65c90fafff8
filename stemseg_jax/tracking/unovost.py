"""UnOVOST: offline proposal tracking in stages (supplementary Sec. V, the baseline on KITTI-MOTS).

After Luiten, Zulfikar, Leibe, "UnOVOST: Unsupervised Offline Video Object Segmentation and Tracking",
WACV 2020, which builds tracks in stages: segments are first grouped into short tracklets that are
spatio-temporally consistent, then the tracklets are merged into long-term tracks by visual (re-id)
similarity. ``unovost_track`` follows its four stages:

1. proposal pruning per frame: a score threshold, then greedy mask NMS (a proposal whose mask IoU with a
   higher-scoring kept one exceeds ``nms_iou`` is dropped), then at most ``max_per_frame`` proposals;
2. short-term tracklets: consecutive proposals linked by optical-flow-warped mask IoU with a high threshold
   (``tracklet_iou``), one linear assignment per frame pair (``OFTracker``);
3. long-term merging: tracklets that never share a frame are merged by the Euclidean distance of their
   mean re-id embeddings (mean over the tracklet's proposals), closest pair first (average-linkage
   agglomeration), while that distance is <= ``merge_distance``;
4. track selection: tracks of at least ``min_track_frames`` frames, ranked by the sum of their proposals'
   scores (mean score x length), the best ``max_tracks`` kept.

Simplified against the paper: its Forest Path Cutting (a decision forest of tracklet-path hypotheses
cut into paths) is replaced by the greedy constrained agglomeration of stage 3, the tracklet links of
stage 2 use flow IoU alone (no re-id gate), and the flow is any ``FlowFn`` (OpenCV here, not PWC-Net).
The defaults are ours (not the paper's), for L2-normalised re-id embeddings; the supplementary tuned
the two IoU thresholds by grid search and found the results insensitive to them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from stemseg_jax.tracking.assign import mask_iou
from stemseg_jax.tracking.flow import FlowFn
from stemseg_jax.tracking.of_tracker import OFTracker
from stemseg_jax.tracking.proposals import FrameProposals


@dataclasses.dataclass(frozen=True)
class UnOVOSTParams:
    """Stage parameters of ``unovost_track`` (see the module docstring)."""

    min_score: float = 0.1
    nms_iou: float = 0.3
    max_per_frame: int = 20
    tracklet_iou: float = 0.5
    merge_distance: float = 0.5
    min_track_frames: int = 1
    max_tracks: int = 20

    def __post_init__(self):
        for name in ("min_score", "nms_iou", "tracklet_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"UnOVOST parameter {name} must be in [0, 1], got {getattr(self, name)}")
        if not self.merge_distance >= 0:
            raise ValueError(f"UnOVOST parameter merge_distance must be >= 0, got {self.merge_distance}")
        for name in ("max_per_frame", "min_track_frames", "max_tracks"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"UnOVOST parameter {name} must be an integer >= 1, got {value}")

    @classmethod
    def from_any(cls, params) -> UnOVOSTParams:
        """``params`` as ``UnOVOSTParams``: one already, None (the defaults) or a mapping of some of its fields
        (a dict, a ``ConfigDict``); an unknown key is an error listing the fields."""
        if params is None:
            return cls()
        if isinstance(params, cls):
            return params
        if not hasattr(params, "keys"):
            raise ValueError(f"UnOVOST parameters must be UnOVOSTParams or a mapping, got {type(params).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(params.keys()) - set(fields))
        if unknown:
            raise ValueError(f"unknown UnOVOST parameter(s) {unknown}; expected some of {fields}")
        return cls(**{k: params[k] for k in params.keys()})


def prune_proposals(props: FrameProposals, params: UnOVOSTParams) -> np.ndarray:
    """Stage 1: indices of the proposals kept (highest score first)."""
    order = [int(i) for i in np.argsort(-props.scores, kind="stable") if props.scores[i] >= params.min_score]
    if not order:
        return np.zeros(0, np.int64)
    masks = props.masks[order]
    iou = mask_iou(masks, masks)
    kept: list[int] = []
    for r in range(len(order)):
        if len(kept) >= params.max_per_frame:
            break
        if not masks[r].any() or (kept and iou[r, kept].max() > params.nms_iou):
            continue
        kept.append(r)
    return np.asarray([order[r] for r in kept], np.int64)


def _merge_tracklets(occupancy: np.ndarray, emb_sums: np.ndarray, counts: np.ndarray,
                     max_distance: float) -> np.ndarray:
    """Stage 3: ``occupancy [K, T] bool`` (frames of each tracklet), ``emb_sums [K, D]``, ``counts [K]`` ->
    ``[K]`` the cluster (index of its first tracklet) each tracklet ends in."""
    k = occupancy.shape[0]
    parent = np.arange(k)
    if k < 2:
        return parent
    occ = occupancy.copy()
    sums = emb_sums.astype(np.float64).copy()
    n = counts.astype(np.float64).copy()
    active = np.ones(k, bool)

    def distances(i):
        means = sums / n[:, None]
        d = np.sqrt(((means - means[i]) ** 2).sum(axis=1))
        d[(occ & occ[i]).any(axis=1) | ~active] = np.inf  # tracks sharing a frame are different objects
        d[i] = np.inf
        return d

    dist = np.stack([distances(i) for i in range(k)])
    while True:
        flat = int(np.argmin(dist))
        a, b = divmod(flat, k)
        if not dist[a, b] <= max_distance:
            return parent
        a, b = min(a, b), max(a, b)
        occ[a] |= occ[b]
        sums[a] += sums[b]
        n[a] += n[b]
        active[b] = False
        parent[parent == b] = a
        dist[b, :] = np.inf
        dist[:, b] = np.inf
        dist[a] = distances(a)
        dist[:, a] = dist[a]


def unovost_track(frames: Callable[[int], np.ndarray], proposals: Sequence[FrameProposals],
                  embeddings: Sequence[np.ndarray], flow_fn: FlowFn,
                  params: UnOVOSTParams | Mapping | None = None) -> list[np.ndarray]:
    """Offline UnOVOST over one video.

    Args:
      frames: ``frames(t)`` -> frame t, ``[H, W, 3] uint8`` BGR (read once each, in order).
      proposals: per frame ``FrameProposals``.
      embeddings: per frame ``[n_t, D]`` re-id embeddings of that frame's proposals.
      flow_fn: ``flow.FlowFn`` for the tracklets.
      params: ``UnOVOSTParams``, or a mapping of some of its fields, or None for the defaults.

    Returns:
      per frame ``[n_t] int32`` track ids aligned with the input proposals, -1 for proposals pruned or in
      tracks not selected; ids are 0, 1, ... in order of the tracks' first frame.
    """
    params = UnOVOSTParams.from_any(params)
    if len(embeddings) != len(proposals):
        raise ValueError(f"unovost_track: embeddings for {len(embeddings)} frames, proposals for {len(proposals)}")
    num_frames = len(proposals)
    dim = None
    for t, (props, emb) in enumerate(zip(proposals, embeddings)):
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[0] != len(props):
            raise ValueError(f"unovost_track: frame {t}: embeddings must be [n, D] for its {len(props)} proposals, "
                             f"got {emb.shape}")
        if len(props):
            if not np.isfinite(emb).all():
                raise ValueError(f"unovost_track: frame {t}: embeddings hold NaN or inf")
            if dim is not None and emb.shape[1] != dim:
                raise ValueError(f"unovost_track: frame {t}: embeddings of dimension {emb.shape[1]}, not {dim}")
            dim = emb.shape[1]

    # Stages 1-2: pruning, then tracklets by flow-warped IoU, streaming the frames.
    tracker = OFTracker(flow_fn, iou_threshold=params.tracklet_iou, min_score=0.0)
    kept_per_frame, tracklet_per_frame = [], []
    for t, props in enumerate(proposals):
        kept = prune_proposals(props, params)
        kept_per_frame.append(kept)
        tracklet_per_frame.append(tracker.update(frames(t), props.select(kept)))
    k = tracker.num_tracks
    out = [np.full(len(p), -1, np.int32) for p in proposals]
    if k == 0:
        return out

    occupancy = np.zeros((k, num_frames), bool)
    emb_sums = np.zeros((k, dim), np.float64)
    counts = np.zeros(k, np.int64)
    score_sums = np.zeros(k, np.float64)
    for t, (kept, tids) in enumerate(zip(kept_per_frame, tracklet_per_frame)):
        emb = np.asarray(embeddings[t], np.float64)
        occupancy[tids, t] = True
        np.add.at(emb_sums, tids, emb[kept])
        np.add.at(counts, tids, 1)
        np.add.at(score_sums, tids, proposals[t].scores[kept].astype(np.float64))

    # Stage 3: long-term merging; stage 4: selection.
    cluster = _merge_tracklets(occupancy, emb_sums, counts, params.merge_distance)
    roots = np.unique(cluster)
    track_frames = {int(r): occupancy[cluster == r].any(axis=0) for r in roots}
    track_score = {int(r): float(score_sums[cluster == r].sum()) for r in roots}
    eligible = [r for r in track_frames if track_frames[r].sum() >= params.min_track_frames]
    chosen = sorted(eligible, key=lambda r: (-track_score[r], r))[: params.max_tracks]
    chosen.sort(key=lambda r: (int(np.argmax(track_frames[r])), -track_score[r], r))
    final = np.full(k, -1, np.int32)
    for new_id, r in enumerate(chosen):
        final[cluster == r] = new_id
    for t, (kept, tids) in enumerate(zip(kept_per_frame, tracklet_per_frame)):
        out[t][kept] = final[tids]
    return out


__all__ = ["UnOVOSTParams", "prune_proposals", "unovost_track"]
