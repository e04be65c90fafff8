"""Inference post-processing: clip schedule, per-clip clustering, linking and per-benchmark outputs (spec §6)."""

from stemseg_jax.inference.clustering import (
    cluster_clip,
    cluster_clip_per_class,
    clustering_options,
    free_dim_bandwidths,
)
from stemseg_jax.inference.forward import forward_clip
from stemseg_jax.inference.linking import LinkedTracks, TrackChainer
from stemseg_jax.inference.schedule import clip_schedule, collapse_repeated_frames
from stemseg_jax.inference.tracks import (
    KittiTracks,
    kitti_detections,
    masks_to_original,
    resolve_overlaps,
    select_tracks_davis,
    select_tracks_kitti,
    select_tracks_ytvis,
    write_davis_outputs,
    write_kitti_outputs,
)

__all__ = [
    "KittiTracks",
    "LinkedTracks",
    "TrackChainer",
    "clip_schedule",
    "cluster_clip",
    "cluster_clip_per_class",
    "clustering_options",
    "collapse_repeated_frames",
    "forward_clip",
    "free_dim_bandwidths",
    "kitti_detections",
    "masks_to_original",
    "resolve_overlaps",
    "select_tracks_davis",
    "select_tracks_kitti",
    "select_tracks_ytvis",
    "write_davis_outputs",
    "write_kitti_outputs",
]
