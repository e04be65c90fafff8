"""Video segmentation methods as pluggable pieces, looked up by ``config.method`` in ``METHODS``.

A method is anything that turns a video's frames into a ``results.VideoResult``: an object with
``segment(load_frame, num_frames, original_hw) -> VideoResult`` (``load_frame(t)`` gives frame ``t`` as
BGR uint8 ``[H, W, 3]``). ``METHODS[name](config, workdir, class_mode)`` builds one: restoring its
weights (``config.inference.checkpoint`` or the newest in ``workdir``) and producing per-track class
scores in the ``class_mode`` the benchmark asks for. The benchmarks consume only ``VideoResult``, so a
new method is a module and a line here, and runs on every benchmark unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from stemseg_jax.methods import stemseg
from stemseg_jax.results import VideoResult


class VideoSegmenterLike(Protocol):
    def segment(self, load_frame: Callable[[int], np.ndarray], num_frames: int,
                original_hw: tuple[int, int]) -> VideoResult: ...


METHODS: dict[str, Callable[..., VideoSegmenterLike]] = {
    "stemseg": stemseg.build,
}


def get_method(config) -> Callable[..., VideoSegmenterLike]:
    """The builder that ``config.method`` names; an unknown name is an error listing the methods."""
    name = config.get("method", "stemseg")
    if name not in METHODS:
        raise ValueError(f"config.method={name!r}: unknown method; expected one of {sorted(METHODS)}")
    return METHODS[name]


def build_method(config, workdir: str | None, class_mode: str | None) -> VideoSegmenterLike:
    """The segmenter that ``config.method`` names (``get_method``), built for ``class_mode``."""
    return get_method(config)(config, workdir, class_mode)


__all__ = ["METHODS", "VideoSegmenterLike", "build_method", "get_method"]
