"""Per-frame mask proposals of a video and their file format (one JSON file per video).

The proposal-based baselines (OF-Tracker, RI-Tracker, UnOVOST; supplementary Sec. III and V) link
per-frame detections over time. The detections come from our Mask R-CNN or from any detector run
elsewhere, through this file format.

File format (UTF-8 JSON, one file per video, ``proposals_path(directory, video)`` = ``<directory>/<video>.json``)::

    {
      "video": "bmx-trees",                       # str, the video's name
      "height": 480, "width": 854,                # ints > 0, the ORIGINAL frame size
      "frames": ["00000.jpg", "00001.jpg", ...],  # str per frame, in temporal order
      "results": [                                # COCO *results* entries, any order, any number per frame
        {"image_id": 0,                           # int, the 0-based frame index into "frames"
         "category_id": 1,                        # int >= 1, the dataset category id (after the benchmark's
                                                  #   mapping; class-agnostic detectors write 1)
         "score": 0.97,                           # finite number in [0, 1]
         "segmentation": {"size": [480, 854],     # RLE size = [height, width]
                          "counts": "..."},       # compressed COCO RLE string (pycocotools.mask.encode);
                                                  #   an uncompressed run list is accepted too
         "bbox": [x, y, w, h]}                    # optional on reading (checked if present: 4 finite
      ]                                           #   numbers, w, h >= 0); the boxes are recomputed from masks
    }

Within a frame the proposals keep the order of the file. Booleans are never accepted as numbers.

A plain COCO results list ``[{...}, ...]`` is read too (Detectron2's ``coco_instances_results.json`` of
``COCOEvaluator`` on a dataset of one video's frames): it carries no frame size or frame list, so
``load_proposals`` then needs ``expected_hw`` and ``expected_frames``, and the dataset must have been
registered with ``image_id`` = the 0-based frame index (and ``category_id`` in the benchmark's ids).
From Detectron2's ``Instances`` directly: ``FrameProposals(inst.pred_masks.numpy(), inst.scores.numpy(),
inst.pred_classes.numpy() + 1)`` (its classes are 0-based contiguous) and ``save_proposals``.

Every malformed field is one ``ValueError`` naming the file, the result index (and its image_id) and the
field. Files are written atomically (``stemseg_jax.io.write_json``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from stemseg_jax import io

_REQUIRED_KEYS = ("image_id", "category_id", "score", "segmentation")


def _masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """``[n, H, W] bool`` -> ``[n, 4] float32`` xyxy with exclusive x2, y2 (COCO: w = x2 - x1); 0s for empty."""
    n = masks.shape[0]
    boxes = np.zeros((n, 4), np.float32)
    if n == 0:
        return boxes
    rows = masks.any(axis=2)  # [n, H]
    cols = masks.any(axis=1)  # [n, W]
    nonempty = rows.any(axis=1)
    h, w = masks.shape[1:]
    y1 = rows.argmax(axis=1)
    y2 = h - rows[:, ::-1].argmax(axis=1)
    x1 = cols.argmax(axis=1)
    x2 = w - cols[:, ::-1].argmax(axis=1)
    boxes[:] = np.stack([x1, y1, x2, y2], axis=1)
    boxes[~nonempty] = 0
    return boxes


@dataclasses.dataclass
class FrameProposals:
    """The mask proposals of one frame.

    Attributes:
      masks: ``[n, H, W] bool`` at the original frame size.
      scores: ``[n] float32`` in [0, 1].
      categories: ``[n] int32`` >= 1, dataset category ids (after the benchmark's mapping).
      stored_boxes: optional ``[n, 4]`` xyxy boxes; ``boxes`` computes them from the masks when None.
    """

    masks: np.ndarray
    scores: np.ndarray
    categories: np.ndarray
    stored_boxes: np.ndarray | None = None

    def __post_init__(self):
        self.masks = np.asarray(self.masks)
        if self.masks.ndim != 3:
            raise ValueError(f"proposal masks must be [n, H, W], got shape {self.masks.shape}")
        self.masks = self.masks.astype(bool, copy=False)
        n = self.masks.shape[0]
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        cats = np.asarray(self.categories)
        if cats.size and not np.issubdtype(cats.dtype, np.integer):
            raise ValueError(f"proposal categories must be integers, got dtype {cats.dtype}")
        self.categories = cats.astype(np.int32).reshape(-1) if cats.size else np.zeros(0, np.int32)
        if self.scores.shape != (n,) or self.categories.shape != (n,):
            raise ValueError(f"{n} proposal masks but scores of shape {self.scores.shape} and categories of "
                             f"shape {self.categories.shape}")
        if n and (not np.isfinite(self.scores).all() or self.scores.min() < 0 or self.scores.max() > 1):
            raise ValueError(f"proposal scores must be finite and in [0, 1], got {self.scores.tolist()}")
        if n and self.categories.min() < 1:
            raise ValueError(f"proposal categories must be >= 1 (0 is background), got {self.categories.tolist()}")
        if self.stored_boxes is not None:
            self.stored_boxes = np.asarray(self.stored_boxes, np.float32).reshape(n, 4)

    @classmethod
    def empty(cls, height: int, width: int) -> FrameProposals:
        return cls(np.zeros((0, height, width), bool), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @property
    def boxes(self) -> np.ndarray:
        """``[n, 4] float32`` xyxy (x2, y2 exclusive, as COCO's ``x + w``), from the masks unless stored."""
        return self.stored_boxes if self.stored_boxes is not None else _masks_to_boxes(self.masks)

    def select(self, keep: np.ndarray) -> FrameProposals:
        """The proposals at indices / boolean mask ``keep``."""
        keep = np.asarray(keep)
        boxes = None if self.stored_boxes is None else self.stored_boxes[keep]
        return FrameProposals(self.masks[keep], self.scores[keep], self.categories[keep], boxes)


def proposals_path(directory: str, video: str) -> str:
    """Where the proposals of ``video`` live under ``directory``: ``<directory>/<video>.json``."""
    if not video or "/" in video or os.sep in video or video in (".", ".."):
        raise ValueError(f"video name {video!r} cannot name a proposal file (empty or holds a path separator)")
    return os.path.join(directory, f"{video}.json")


def save_proposals(path: str, video: str, frame_names: Sequence[str], proposals: Sequence[FrameProposals]) -> None:
    """Writes one video's proposals (the format of the module docstring), atomically."""
    frame_names = [str(f) for f in frame_names]
    if len(frame_names) != len(proposals):
        raise ValueError(f"{path}: {len(frame_names)} frame names but proposals for {len(proposals)} frames")
    if not proposals:
        raise ValueError(f"{path}: a video needs at least one frame")
    hw = proposals[0].hw
    results = []
    for t, props in enumerate(proposals):
        if props.hw != hw:
            raise ValueError(f"{path}: frame {t} proposals are {props.hw}, frame 0 proposals are {hw}")
        boxes = props.boxes
        for k, rle in enumerate(io.encode_rles(props.masks)):
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            results.append({"image_id": t, "category_id": int(props.categories[k]), "score": float(props.scores[k]),
                            "segmentation": rle, "bbox": [x1, y1, x2 - x1, y2 - y1]})
    io.write_json(path, {"video": str(video), "height": hw[0], "width": hw[1], "frames": frame_names,
                         "results": results})


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_header(path: str, data: dict, expected_hw, expected_frames) -> tuple[str, int, int, list[str]]:
    missing = [k for k in ("video", "height", "width", "frames", "results") if k not in data]
    if missing:
        raise ValueError(f"proposals file {path}: missing top-level field(s) {missing}")
    video, h, w, frames = data["video"], data["height"], data["width"], data["frames"]
    if not isinstance(video, str):
        raise ValueError(f"proposals file {path}: field 'video' must be a string, got {io.short_repr(video)}")
    for name, v in (("height", h), ("width", w)):
        if not io.is_int(v) or v <= 0:
            raise ValueError(f"proposals file {path}: field '{name}' must be a positive integer, "
                             f"got {io.short_repr(v)}")
    if not isinstance(frames, list) or not frames or not all(isinstance(f, str) for f in frames):
        raise ValueError(f"proposals file {path}: field 'frames' must be a non-empty list of frame names, "
                         f"got {io.short_repr(frames)}")
    if not isinstance(data["results"], list):
        raise ValueError(f"proposals file {path}: field 'results' must be a list, got {type(data['results']).__name__}")
    if expected_hw is not None and (int(h), int(w)) != tuple(int(v) for v in expected_hw):
        raise ValueError(f"proposals file {path}: fields 'height', 'width' = {[h, w]} disagree with the frame size "
                         f"{list(expected_hw)}")
    if expected_frames is not None:
        if isinstance(expected_frames, numbers.Integral):
            if len(frames) != int(expected_frames):
                raise ValueError(f"proposals file {path}: field 'frames' lists {len(frames)} frames, the video has "
                                 f"{int(expected_frames)}")
        elif list(expected_frames) != frames:
            raise ValueError(f"proposals file {path}: field 'frames' {io.short_repr(frames)} disagrees with the "
                             f"video's frames {io.short_repr(list(expected_frames))}")
    return video, int(h), int(w), frames


def load_proposals(path: str, expected_hw: tuple[int, int] | None = None,
                   expected_frames: int | Sequence[str] | None = None) -> tuple[str, list[str], list[FrameProposals]]:
    """Reads a proposal file: ``(video, frame_names, [FrameProposals per frame])``.

    ``expected_hw`` (original frame size) and ``expected_frames`` (a frame count or the frame names) are
    checked against the file's header when given; a plain COCO results list needs both (its video name is
    the file's stem and its frame names are ``expected_frames`` or, for a count, ``"0"``, ``"1"``, ...).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"proposals file {path} does not exist")
    data = io.read_json(path, "proposals file")
    if isinstance(data, dict):
        video, h, w, frames = _check_header(path, data, expected_hw, expected_frames)
        results = data["results"]
    elif isinstance(data, list):
        if expected_hw is None or expected_frames is None:
            raise ValueError(f"proposals file {path} is a plain COCO results list: reading it needs the frame size "
                             f"(expected_hw) and the frames (expected_frames)")
        h, w = (int(v) for v in expected_hw)
        if isinstance(expected_frames, numbers.Integral):
            frames = [str(t) for t in range(int(expected_frames))]
        else:
            frames = [str(f) for f in expected_frames]
        video, results = os.path.splitext(os.path.basename(path))[0], data
    else:
        raise ValueError(f"proposals file {path}: top level must be an object or a list, got {type(data).__name__}")

    per_frame: list[list[tuple[np.ndarray, float, int]]] = [[] for _ in frames]
    for k, r in enumerate(results):
        where = f"proposals file {path}, result {k}"
        if not isinstance(r, dict):
            raise ValueError(f"{where}: must be an object, got {type(r).__name__}")
        missing = [key for key in _REQUIRED_KEYS if key not in r]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        image_id = r["image_id"]
        if not io.is_int(image_id) or not 0 <= image_id < len(frames):
            raise ValueError(f"{where}: field 'image_id' must be a frame index in [0, {len(frames)}), "
                             f"got {io.short_repr(image_id)}")
        where = f"{where} (image_id {image_id})"
        cat, score, segm = r["category_id"], r["score"], r["segmentation"]
        if not io.is_int(cat) or cat < 1:
            raise ValueError(f"{where}: field 'category_id' must be an integer >= 1, got {io.short_repr(cat)}")
        if not _is_number(score) or not math.isfinite(score) or not 0 <= score <= 1:
            raise ValueError(f"{where}: field 'score' must be a finite number in [0, 1], got {io.short_repr(score)}")
        if "bbox" in r:
            box = r["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) and math.isfinite(v) for v in box)
                    and box[2] >= 0 and box[3] >= 0):
                raise ValueError(f"{where}: field 'bbox' must be [x, y, w, h] (finite, w, h >= 0), "
                                 f"got {io.short_repr(box)}")
        if not isinstance(segm, dict):
            raise ValueError(f"{where}: field 'segmentation' must be an RLE object {{size, counts}}, "
                             f"got {type(segm).__name__}")
        mask = io.decode_segmentation(segm, h, w, f"{where}, field 'segmentation'")
        per_frame[image_id].append((mask, float(score), int(cat)))

    proposals = []
    for entries in per_frame:
        if not entries:
            proposals.append(FrameProposals.empty(h, w))
            continue
        masks, scores, cats = zip(*entries)
        proposals.append(FrameProposals(np.stack(masks), np.asarray(scores, np.float32), np.asarray(cats, np.int32)))
    return video, list(frames), proposals


__all__ = ["FrameProposals", "load_proposals", "proposals_path", "save_proposals"]


def write_ground_truth_proposals(records, directory: str, class_agnostic: bool = False) -> list[str]:
    """Writes the annotations of ``records`` (``data.records.VideoRecord``s) as proposal files with score 1:
    "oracle" proposals, to measure a tracker with a perfect detector (``tools/compare_baselines.py --oracle``).
    Categories are the records' (1 for every instance with ``class_agnostic``). Returns the files written."""
    paths = []
    for record in records:
        ids = list(record.instance_ids)
        masks, _ = record.masks.load(range(record.num_frames), ids)
        frames = []
        for t in range(record.num_frames):
            present = [i for i in range(len(ids)) if masks[i, t].any()]
            frames.append(FrameProposals(
                masks=masks[present, t] if present else np.zeros((0, record.height, record.width), bool),
                scores=np.ones(len(present), np.float32),
                categories=np.asarray([1 if class_agnostic else record.categories[ids[i]] for i in present],
                                      np.int32)))
        path = proposals_path(directory, record.name)
        save_proposals(path, record.name, [os.path.basename(p) for p in record.frame_paths], frames)
        paths.append(path)
    return paths
