"""The single-instance duplicator (spec §5.4).

A video clip with exactly one instance gets a second one: the object is copy-pasted with a shift,
consistently across frames, so the network sees two same-class objects that must get different
embeddings. Direction rules keep the copy inside the frame; see ``duplicate_single_instance``.

Deviation from the official code: the official caps only positive shifts at 0.3 x the image side
(``min(shift, 0.3 * W)``) and never negative ones (a QUIRK); we cap the magnitude in both directions.
"""

from __future__ import annotations

import cv2
import numpy as np


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x_min, y_min, x_max, y_max)`` of a ``[H, W]`` mask with exclusive max, or None when empty."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _axis_rule(lo: int, hi: int, size: int) -> float | None:
    """Direction forced by one frame along one axis (None: this frame forces nothing)."""
    extent = hi - lo
    if extent > 0.4 * size:
        if lo == 0:
            return -1.0  # large and touching the low border: push it further out that way
        if hi == size:
            return 1.0
    elif extent < 0.2 * size:
        centre = (lo + hi) / 2.0
        if centre < 0.25 * size:
            return 1.0  # small and near the low border: moving it further would lose it
        if centre > 0.75 * size:
            return -1.0
    return None


def duplicate_single_instance(
    images: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """Copy-pastes the only instance of a clip with a shift (spec §5.4).

    Rules, over the frames in order (the last rule that fires wins): an object wider than 0.4 W that
    touches the left (right) border is shifted left (right); one narrower than 0.2 W whose centre is in
    the left (right) quarter is shifted right (left); the same vertically. Unforced directions are
    random; touching top and bottom (in any frames) means no vertical shift; touching left and right
    means no duplication. The copy is flipped within its bbox with p = 0.5 when it never touches the
    left or right border. Per frame, shift_x = dir_x * (0.75 + 0.25 U) * w_box and
    shift_y = dir_y * 0.25 U * h_box, magnitudes capped at 0.3 W / 0.3 H. The copy is pasted where its
    warped mask is set and removes the original there. Frames without the instance are unchanged.

    Args:
      images: ``[T, H, W, 3]`` uint8.
      mask: ``[T, H, W]`` bool, the single instance.
      rng: randomness.

    Returns:
      ``(images [T, H, W, 3] uint8, masks [2, T, H, W] bool)`` with the original (minus the copy's
      footprint) first, or None when duplication is infeasible.
    """
    num_frames, h, w = mask.shape
    boxes = [mask_bbox(m) for m in mask]
    if all(b is None for b in boxes):
        return None
    dir_x = dir_y = None
    left = right = top = bottom = False
    for box in boxes:
        if box is None:
            continue
        x0, y0, x1, y1 = box
        left |= x0 == 0
        right |= x1 == w
        top |= y0 == 0
        bottom |= y1 == h
        forced_x, forced_y = _axis_rule(x0, x1, w), _axis_rule(y0, y1, h)
        dir_x = dir_x if forced_x is None else forced_x
        dir_y = dir_y if forced_y is None else forced_y
    if left and right:
        return None
    if top and bottom:
        dir_y = 0.0
    if dir_x is None:
        dir_x = -1.0 if rng.random() < 0.5 else 1.0
    if dir_y is None:
        dir_y = -1.0 if rng.random() < 0.5 else 1.0
    flip = (not left and not right) and rng.random() < 0.5

    out_images = images.copy()
    original = mask.copy()
    copy = np.zeros_like(mask)
    for t, box in enumerate(boxes):
        if box is None:
            continue
        x0, y0, x1, y1 = box
        src_img, src_mask = images[t], mask[t].astype(np.uint8)
        if flip:
            src_img, src_mask = src_img.copy(), src_mask.copy()
            src_img[y0:y1, x0:x1] = src_img[y0:y1, x0:x1][:, ::-1]
            src_mask[y0:y1, x0:x1] = src_mask[y0:y1, x0:x1][:, ::-1]
        shift_x = dir_x * (0.75 + 0.25 * rng.random()) * (x1 - x0)
        shift_y = dir_y * 0.25 * rng.random() * (y1 - y0)
        shift_x = float(np.clip(shift_x, -0.3 * w, 0.3 * w))
        shift_y = float(np.clip(shift_y, -0.3 * h, 0.3 * h))
        affine = np.array([[1.0, 0.0, shift_x], [0.0, 1.0, shift_y]], np.float32)
        warped_img = cv2.warpAffine(src_img, affine, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
        warped_mask = cv2.warpAffine(src_mask, affine, (w, h), flags=cv2.INTER_LINEAR, borderValue=0) > 0
        out_images[t][warped_mask] = warped_img[warped_mask]
        copy[t] = warped_mask
        original[t] &= ~warped_mask
    if not copy.any() or not original.any():
        return None  # the copy fell off the frame or covered the original completely
    return out_images, np.stack([original, copy])
