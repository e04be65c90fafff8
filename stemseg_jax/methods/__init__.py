"""Video segmentation methods as pluggable pieces, looked up by ``config.method`` in ``METHODS``.

A method is anything that turns a video's frames into a ``results.VideoResult``: an object with
``segment(load_frame, num_frames, original_hw) -> VideoResult`` (``load_frame(t)`` gives frame ``t`` as
BGR uint8 ``[H, W, 3]``; ``video`` names the video, for methods that read per-video files such as
precomputed proposals). ``METHODS[name]`` is a ``Method``: ``build(config, workdir, class_mode)`` makes
a segmenter, restoring its weights (from the config's checkpoint fields or the newest in ``workdir``) and
producing per-track class scores in the ``class_mode`` the benchmark asks for; ``train(config, workdir)``
trains whatever networks it needs (``--mode train``). The benchmarks consume only ``VideoResult``, so a new
method is a module and a line here, and runs on every benchmark unchanged.

  stemseg     the paper's bottom-up network (``inference.video.VideoSegmenter``)
  of_tracker  Mask R-CNN proposals linked by optical-flow-warped mask overlap (seed Sec. III)
  ri_tracker  Mask R-CNN proposals linked by re-id embedding distance (seed Sec. III)
  unovost     flow tracklets merged by re-id, UnOVOST (Luiten et al. 2020; seed Sec. V)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np

from stemseg_jax.methods import proposal_trackers, stemseg
from stemseg_jax.results import VideoResult


class VideoSegmenterLike(Protocol):
    def segment(self, load_frame: Callable[[int], np.ndarray], num_frames: int,
                original_hw: tuple[int, int], video: str = "") -> VideoResult: ...


@dataclasses.dataclass(frozen=True)
class Method:
    build: Callable[..., VideoSegmenterLike]  # (config, workdir, class_mode) -> segmenter
    train: Callable[..., object]  # (config, workdir) -> anything; trains what the method needs


METHODS: dict[str, Method] = {
    "stemseg": Method(stemseg.build, stemseg.train),
    "of_tracker": Method(proposal_trackers.build_of_tracker, proposal_trackers.train_proposals),
    "ri_tracker": Method(proposal_trackers.build_ri_tracker, proposal_trackers.train_proposals_and_reid),
    "unovost": Method(proposal_trackers.build_unovost, proposal_trackers.train_proposals_and_reid),
}


def get_method(config) -> Method:
    """The ``Method`` that ``config.method`` names; an unknown name is an error listing the methods."""
    name = config.get("method", "stemseg")
    if name not in METHODS:
        raise ValueError(f"config.method={name!r}: unknown method; expected one of {sorted(METHODS)}")
    return METHODS[name]


def build_method(config, workdir: str | None, class_mode: str | None) -> VideoSegmenterLike:
    """The segmenter that ``config.method`` names (``get_method``), built for ``class_mode``."""
    return get_method(config).build(config, workdir, class_mode)


def train_method(config, workdir: str):
    """Trains what ``config.method`` needs in ``workdir`` (``--mode train``)."""
    return get_method(config).train(config, workdir)


__all__ = ["METHODS", "Method", "VideoSegmenterLike", "build_method", "get_method", "train_method"]
