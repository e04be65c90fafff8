"""Instance crops and batch-hard triplet batches for the re-id network (seed supplementary Sec. III:
"randomly selected triplets from a random video sequence").

A batch holds P instances x K crops: the P instances come from one random video when it has that many
(negatives from the same video are the hard ones the RI-Tracker must tell apart), otherwise from that
video and then further random videos until P are found, so every batch has the same shape. Only video
records are used: an image record (COCO, VOC) has one frame, and its "positives" would be the same crop
augmented, which teaches invariance to the augmentation rather than to pose and appearance changes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import cv2
import numpy as np

from stemseg_jax.data.records import VideoRecord
from stemseg_jax.io import read_image
from stemseg_jax.preprocessing import PAD_VALUE_BGR


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The box ``(x0, y0, x1, y1)`` in pixel-edge coordinates (the last pixel's far edge: ``max + 1``) of a
    ``[H, W]`` bool mask; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def crop_window(box_xyxy, out_hw: tuple[int, int], context: float = 1.0,
                keep_aspect: bool = True) -> tuple[float, float, float, float]:
    """The window ``(x0, y0, x1, y1)`` that ``crop`` samples for ``box_xyxy``: the box scaled by ``context``
    about its centre and, with ``keep_aspect``, widened along its short side to ``out_hw``'s aspect ratio
    (so the object is not stretched)."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    w, h = x1 - x0, y1 - y0
    if not (w > 0 and h > 0) or not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"crop box must be finite with x1 > x0 and y1 > y0, got {tuple(box_xyxy)}")
    if context <= 0:
        raise ValueError(f"crop context must be positive, got {context}")
    out_h, out_w = out_hw
    w, h = w * context, h * context
    if keep_aspect:
        aspect = out_w / out_h
        if w / h < aspect:
            w = h * aspect
        else:
            h = w / aspect
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def crop(image_bgr: np.ndarray, box_xyxy, out_hw: tuple[int, int], context: float = 1.0,
         keep_aspect: bool = True) -> np.ndarray:
    """The ``[h, w, 3]`` uint8 crop of ``image_bgr [H, W, 3]`` uint8 around ``box_xyxy`` (pixel-edge
    coordinates, as ``mask_box``), resampled to ``out_hw = (h, w)``.

    The window is ``crop_window``'s. Output pixel ``(v, u)`` samples the window at its own centre, so the
    window's edges map onto the crop's edges (half-pixel convention, as ``preprocessing.resize_image``).
    Bilinear; the part of the window outside the frame is ``preprocessing.PAD_VALUE_BGR`` (zero after
    mean subtraction).
    """
    image_bgr = np.asarray(image_bgr)
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"crop expects a uint8 [H, W, 3] image, got {image_bgr.dtype} {image_bgr.shape}")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"crop size must be positive, got {out_hw}")
    wx0, wy0, wx1, wy1 = crop_window(box_xyxy, (out_h, out_w), context, keep_aspect)
    sx, sy = (wx1 - wx0) / out_w, (wy1 - wy0) / out_h
    # Destination -> source map: pixel centre u + 0.5 of the crop lies at wx0 + (u + 0.5) * sx in edge
    # coordinates, i.e. at that minus 0.5 in OpenCV's pixel-centre coordinates.
    inverse = np.array([[sx, 0.0, wx0 + 0.5 * sx - 0.5], [0.0, sy, wy0 + 0.5 * sy - 0.5]], np.float64)
    return cv2.warpAffine(
        image_bgr, inverse, (out_w, out_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(v) for v in PAD_VALUE_BGR),
    )


def jitter_box(box_xyxy, rng: np.random.Generator, amount: float) -> tuple[float, float, float, float]:
    """``box_xyxy`` with its centre moved by up to ``amount`` of its size and each side scaled by a factor
    in ``[exp(-amount), exp(amount)]`` (log-uniform, so growing and shrinking are equally likely)."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    if amount <= 0:
        return x0, y0, x1, y1
    w, h = x1 - x0, y1 - y0
    dx, dy, lw, lh = rng.uniform(-amount, amount, size=4)
    cx, cy = (x0 + x1) / 2 + dx * w, (y0 + y1) / 2 + dy * h
    w, h = w * math.exp(lw), h * math.exp(lh)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


@dataclasses.dataclass(frozen=True)
class _Video:
    record: VideoRecord
    # instance id -> the frames it is present in
    frames: dict[int, tuple[int, ...]]


class TripletSampler:
    """``sampler(step) -> {"crops": [P*K, h, w, 3] uint8 BGR, "labels": [P*K] int32}``.

    Labels are ``0..P-1`` in batch order, K consecutive crops each. Instance ``i``'s crops are K random
    frames it is present in (with repetition only when it has fewer than K), cropped around its mask's
    box after ``jitter_box`` and flipped horizontally at random. Deterministic in ``(seed, step)``, so a
    resumed run sees the batches an uninterrupted one would.

    Args:
      records: the dataset; image records and instances present in no frame are left out.
      P, K: instances per batch and crops per instance.
      out_hw: the crops' ``(h, w)``.
      weights: optional sampling weight per record (e.g. a dataset's weight spread over its videos).
      context: ``crop``'s context factor; jitter: ``jitter_box``'s amount; flip: random horizontal flips.
    """

    def __init__(self, records: Sequence[VideoRecord], P: int, K: int, out_hw: tuple[int, int], seed: int, *,
                 weights: Sequence[float] | None = None, context: float = 1.25, jitter: float = 0.1,
                 flip: bool = True, keep_aspect: bool = True):
        if P < 2 or K < 2:
            raise ValueError(f"a batch-hard triplet batch needs P >= 2 instances and K >= 2 crops each, "
                             f"got P={P}, K={K}")
        if weights is not None and len(weights) != len(records):
            raise ValueError(f"{len(weights)} weights for {len(records)} records")
        videos, w = [], []
        for i, r in enumerate(records):
            if r.is_image:
                continue
            frames = {iid: tuple(t for t, present in enumerate(r.frame_instances) if iid in present)
                      for iid in r.instance_ids}
            frames = {iid: f for iid, f in frames.items() if f}
            if frames:
                videos.append(_Video(r, frames))
                w.append(1.0 if weights is None else float(weights[i]))
        total = sum(len(v.frames) for v in videos)
        if total < P:
            raise ValueError(f"the {len(videos)} usable videos hold {total} instances in all, fewer than P={P} "
                             "(image records are not used for re-id training)")
        self.videos = videos
        self._weights = np.asarray(w, np.float64) / np.sum(w)
        # The first video of a batch must give a positive and a negative from one sequence when any can.
        self._multi = np.asarray([len(v.frames) >= 2 for v in videos])
        self.P, self.K, self.out_hw, self.seed = int(P), int(K), (int(out_hw[0]), int(out_hw[1])), int(seed)
        self.context, self.jitter, self.flip, self.keep_aspect = float(context), float(jitter), bool(flip), keep_aspect

    def plan(self, step: int) -> list[tuple[int, int, list[int]]]:
        """The batch of ``step`` as ``[(video index, instance id, [K frame indices])]``, P entries."""
        rng = np.random.default_rng((self.seed, int(step)))
        first_pool = self._multi if self._multi.any() else np.ones(len(self.videos), bool)
        p = np.where(first_pool, self._weights, 0.0)
        order = [int(rng.choice(len(self.videos), p=p / p.sum()))]
        chosen: list[tuple[int, int]] = []
        remaining = np.ones(len(self.videos), bool)
        while True:
            v = order[-1]
            remaining[v] = False
            ids = list(self.videos[v].frames)
            for j in rng.permutation(len(ids))[: self.P - len(chosen)]:
                chosen.append((v, ids[j]))
            if len(chosen) == self.P:
                break
            # More videos without replacement, so that no instance appears under two labels.
            p = np.where(remaining, self._weights, 0.0)
            if p.sum() <= 0:  # only zero-weight videos left: take them uniformly
                p = remaining.astype(np.float64)
            order.append(int(rng.choice(len(self.videos), p=p / p.sum())))
        out = []
        for v, iid in chosen:
            frames = self.videos[v].frames[iid]
            pick = rng.choice(len(frames), size=self.K, replace=len(frames) < self.K)
            out.append((v, iid, [frames[int(k)] for k in pick]))
        return out

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        plan = self.plan(step)
        # Augmentation draws from a stream of its own, so the plan does not depend on how many draws it takes.
        aug = np.random.default_rng((self.seed, int(step), 1))
        h, w = self.out_hw
        crops = np.empty((self.P * self.K, h, w, 3), np.uint8)
        labels = np.repeat(np.arange(self.P, dtype=np.int32), self.K)
        by_video: dict[int, list[int]] = {}
        for slot, (v, _, _) in enumerate(plan):
            by_video.setdefault(v, []).append(slot)
        for v, slots in by_video.items():
            record = self.videos[v].record
            frames = sorted({t for s in slots for t in plan[s][2]})
            ids = [plan[s][1] for s in slots]
            masks, _ = record.masks.load(frames, ids)
            if masks.shape[2:] != (record.height, record.width):
                raise ValueError(f"{record.source} (sequence {record.name!r}): masks are {masks.shape[2:]}, "
                                 f"the record says {record.height}x{record.width}")
            images = {t: read_image(record.frame_paths[t]) for t in frames}
            for row, s in enumerate(slots):
                for k, t in enumerate(plan[s][2]):
                    box = mask_box(masks[row, frames.index(t)])
                    if box is None:
                        raise ValueError(f"{record.source} (sequence {record.name!r}): instance {plan[s][1]} is "
                                         f"listed in frame {t} ({record.frame_paths[t]}) but its mask there is empty")
                    image = images[t]
                    if image.shape[:2] != (record.height, record.width):
                        raise ValueError(f"{record.frame_paths[t]}: image is {image.shape[:2]}, the record says "
                                         f"{record.height}x{record.width}")
                    c = crop(image, jitter_box(box, aug, self.jitter), self.out_hw, self.context, self.keep_aspect)
                    if self.flip and aug.random() < 0.5:
                        c = c[:, ::-1]
                    crops[s * self.K + k] = c
        return {"crops": crops, "labels": labels}
