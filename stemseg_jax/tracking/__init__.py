"""Proposal-based tracking (pure NumPy / OpenCV): the seed's baselines that link per-frame mask proposals.

- ``proposals``: ``FrameProposals`` and the per-video proposal JSON (``save_proposals`` / ``load_proposals``);
- ``flow``: optical flow (``FLOWS``: OpenCV DIS, Farnebäck) and ``warp_masks``;
- ``assign``: ``mask_iou`` and the gated ``linear_assign``;
- ``of_tracker.OFTracker``, ``ri_tracker.RITracker`` (supplementary Sec. III), ``unovost.unovost_track`` (Sec. V);
- ``paint``: ``paint_tracks`` (label maps) and ``TrackClassVotes`` (per-track class scores).

Imports only ``stemseg_jax.io``; no model code (re-id embeddings are passed in as arrays).
"""

from stemseg_jax.tracking.assign import linear_assign, mask_iou
from stemseg_jax.tracking.flow import FLOWS, FlowFn, get_flow, warp_masks
from stemseg_jax.tracking.of_tracker import OFTracker
from stemseg_jax.tracking.paint import TrackClassVotes, paint_tracks
from stemseg_jax.tracking.proposals import (
    FrameProposals,
    load_proposals,
    proposals_path,
    save_proposals,
    write_ground_truth_proposals,
)
from stemseg_jax.tracking.ri_tracker import RITracker
from stemseg_jax.tracking.unovost import UnOVOSTParams, prune_proposals, unovost_track

__all__ = [
    "FLOWS", "FlowFn", "FrameProposals", "OFTracker", "RITracker", "TrackClassVotes", "UnOVOSTParams",
    "get_flow", "linear_assign", "load_proposals", "mask_iou", "paint_tracks", "proposals_path",
    "prune_proposals", "save_proposals", "unovost_track", "warp_masks", "write_ground_truth_proposals",
]
