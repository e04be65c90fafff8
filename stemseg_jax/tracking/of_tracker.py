"""OF-Tracker: links per-frame mask proposals by optical-flow-warped mask overlap (supplementary Sec. III).

As the seed: for each frame pair (i, i+1) the proposals of frame i+1 are warped onto frame i with the
flow i -> i+1 (``flow.warp_masks``), a linear assignment on the IoU between the warped masks and the
proposals of frame i associates them, and the ids of frame i are propagated forward; an unmatched
proposal starts a new track. The seed used PWC-Net flow; any ``FlowFn`` plugs in. The supplementary gives
no thresholds; the defaults (IoU >= 0.1, no score threshold) are those of a public proposal-warping
script for DAVIS from the authors' group, seen through the code search (not verified as the paper's).

Incremental: ``update`` takes one frame at a time and keeps only the previous frame and its tracked
proposals, so a video of any length streams. A track not matched in the next frame ends (no memory).
"""

from __future__ import annotations

import numpy as np

from stemseg_jax.tracking.assign import linear_assign, mask_iou
from stemseg_jax.tracking.flow import FlowFn, warp_masks
from stemseg_jax.tracking.proposals import FrameProposals


class OFTracker:
    """Online optical-flow tracker.

    Args:
      flow_fn: ``FlowFn`` (``flow.FLOWS``).
      iou_threshold: the least IoU (warped next mask vs this frame's mask) to link two proposals; > 0 always.
      min_score: proposals scoring below it are not tracked (id -1).
    """

    def __init__(self, flow_fn: FlowFn, iou_threshold: float = 0.1, min_score: float = 0.0):
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"OFTracker: iou_threshold must be in [0, 1], got {iou_threshold}")
        self.flow_fn = flow_fn
        self.iou_threshold = float(iou_threshold)
        self.min_score = float(min_score)
        self._next_id = 0
        self._prev_frame: np.ndarray | None = None
        self._prev_masks: np.ndarray | None = None  # [k, H, W] the tracked proposals of the previous frame
        self._prev_ids: np.ndarray | None = None  # [k]

    @property
    def num_tracks(self) -> int:
        """How many track ids have been handed out (ids are 0 .. num_tracks - 1)."""
        return self._next_id

    def update(self, frame_bgr: np.ndarray, props: FrameProposals) -> np.ndarray:
        """Track ids ``[n] int32`` of this frame's proposals (-1: below ``min_score``); ids are never reused."""
        frame_bgr = np.asarray(frame_bgr)
        if frame_bgr.ndim != 3 or frame_bgr.shape[:2] != props.hw:
            raise ValueError(f"OFTracker: frame of shape {frame_bgr.shape} does not match proposals of size {props.hw}")
        ids = np.full(len(props), -1, np.int32)
        keep = np.flatnonzero(props.scores >= self.min_score)
        masks = props.masks[keep]
        if self._prev_frame is not None and self._prev_frame.shape != frame_bgr.shape:
            raise ValueError(f"OFTracker: frame size changed from {self._prev_frame.shape} to {frame_bgr.shape}")
        if self._prev_masks is not None and len(self._prev_masks) and len(keep):
            flow = self.flow_fn(self._prev_frame, frame_bgr)
            iou = mask_iou(warp_masks(masks, flow), self._prev_masks)  # [n_keep, k]
            # A pair with no overlap is never a link, even with a threshold of 0.
            cost = np.where((iou >= self.iou_threshold) & (iou > 0), 1.0 - iou, np.inf)
            for i, j in linear_assign(cost, np.inf):
                ids[keep[i]] = self._prev_ids[j]
        for i in keep:
            if ids[i] < 0:
                ids[i] = self._next_id
                self._next_id += 1
        self._prev_frame = frame_bgr
        self._prev_masks = masks
        self._prev_ids = ids[keep]
        return ids


__all__ = ["OFTracker"]
