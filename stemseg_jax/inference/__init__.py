"""STEm-Seg inference (spec §6): clip schedule, per-clip clustering, linking, and the streaming
``VideoSegmenter``. What happens to its tracks per benchmark lives in ``stemseg_jax.benchmarks``."""

from stemseg_jax.inference.clustering import (
    cluster_clip,
    cluster_clip_per_class,
    clustering_options,
    free_dim_bandwidths,
)
from stemseg_jax.inference.forward import forward_clip
from stemseg_jax.inference.linking import TrackChainer
from stemseg_jax.inference.schedule import clip_schedule, collapse_repeated_frames
from stemseg_jax.results import LinkedTracks

__all__ = [
    "LinkedTracks",
    "TrackChainer",
    "clip_schedule",
    "cluster_clip",
    "cluster_clip_per_class",
    "clustering_options",
    "collapse_repeated_frames",
    "forward_clip",
    "free_dim_bandwidths",
]
