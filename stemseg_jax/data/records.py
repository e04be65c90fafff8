"""The in-memory dataset representation shared by every reader and the input pipeline.

A dataset is a ``list[VideoRecord]``. A record knows its frames, its instances and which instance is
present in which frame without decoding a single mask; masks come from its ``MaskSource`` on demand,
so a large split (YouTube-VIS train) costs only its annotation JSON in memory.

Ignore regions (KITTI class 10, COCO ``iscrowd``, VOC void 255, Mapillary ignore categories) are not
instances: every ``MaskSource`` returns them in a separate ignore mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class MaskSource(Protocol):
    """Lazily decodes the masks of one record."""

    def load(self, frame_indices: Sequence[int], instance_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(masks [I, F, H, W] bool`` in the order of ``instance_ids``, ``ignore [F, H, W] bool)``.

        Masks are at the original frame size. An instance absent from a frame has an all-False mask
        there. Raises ``ValueError`` naming the file and frame/instance on corrupt or inconsistent data.
        """
        ...


@dataclasses.dataclass(frozen=True)
class VideoRecord:
    """One video (or one image, as a one-frame video) of a dataset.

    Attributes:
      name: sequence id ("bear", "0002", YouTube-VIS video id as str, image id).
      frame_paths: absolute image paths in time order (one entry for an image dataset).
      height, width: original frame size.
      categories: instance id -> category id (dataset's own ids, after the category map).
      frame_instances: instance ids present in each frame, one frozenset per frame.
      masks: lazy decoder of instance and ignore masks.
      is_image: True for COCO/VOC/Mapillary samples (image -> pseudo-video augmentation).
      source: file the annotations came from, for error messages.
    """

    name: str
    frame_paths: tuple[str, ...]
    height: int
    width: int
    categories: dict[int, int]
    frame_instances: tuple[frozenset[int], ...]
    masks: MaskSource
    is_image: bool = False
    source: str = ""

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    @property
    def instance_ids(self) -> tuple[int, ...]:
        """Sorted ids of all instances of the record."""
        return tuple(sorted(self.categories))

    def __post_init__(self):
        where = f"{self.source or '<unknown source>'} (sequence {self.name!r})"
        if len(self.frame_instances) != len(self.frame_paths):
            raise ValueError(
                f"{where}: {len(self.frame_paths)} frames but {len(self.frame_instances)} frame_instances entries"
            )
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"{where}: invalid frame size {self.height}x{self.width}")
        for t, present in enumerate(self.frame_instances):
            unknown = set(present) - set(self.categories)
            if unknown:
                raise ValueError(f"{where}: frame {t} lists instance(s) {sorted(unknown)} without a category")


class EmptyMaskSource:
    """Mask source of an unannotated record (e.g. a YouTube-VIS ``valid`` video): no instances, no ignore."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width

    def load(self, frame_indices: Sequence[int], instance_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        if len(instance_ids):
            raise ValueError(f"unannotated record has no instances, asked for {list(instance_ids)}")
        f = len(frame_indices)
        return (
            np.zeros((0, f, self.height, self.width), bool),
            np.zeros((f, self.height, self.width), bool),
        )
