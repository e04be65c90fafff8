"""Input preprocessing shared by the data pipeline, the model and inference.

The official network was trained on Caffe2-style inputs: BGR channel order, 0-255 range, per-channel
mean subtraction and no division by the standard deviation (spec §1.4). Images are resized so that
the shorter side becomes ``min_dim`` unless that pushes the longer side past ``max_dim``, and padded
at the bottom/right to a multiple of 32.

The pipeline ships images as uint8 (4x less host->device traffic than float32). Padding is done in
uint8 with the *rounded* mean colour ``PAD_VALUE_BGR`` so that, after mean subtraction on the device,
padded pixels are within 0.3 grey levels of the official zero. This module deliberately depends only
on NumPy and OpenCV so that ``stemseg_jax.data`` can import it without importing the model.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# Caffe2 / Detectron pixel means in BGR order (spec §1.4).
PIXEL_MEAN_BGR = (102.9801, 115.9465, 122.7717)
# uint8 value that becomes ~0 after mean subtraction; used for padding and invalid pixels.
PAD_VALUE_BGR = tuple(int(round(m)) for m in PIXEL_MEAN_BGR)
SIZE_DIVISIBILITY = 32


def compute_resize_dims(height: int, width: int, min_dim: int, max_dim: int) -> tuple[int, int]:
    """Returns ``(new_height, new_width)`` for an image of ``height x width`` (spec §1.4).

    scale = min_dim / shorter side, reduced to max_dim / longer side if the longer side would
    exceed max_dim. Sizes use Python's ``round`` (banker's rounding), as the official code does.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = min_dim / min(height, width)
    if max(height, width) * scale > max_dim:
        scale = max_dim / max(height, width)
    return int(round(scale * height)), int(round(scale * width))


def padded_dims(height: int, width: int) -> tuple[int, int]:
    """Smallest ``(H, W)`` >= ``(height, width)`` that are multiples of ``SIZE_DIVISIBILITY``."""
    d = SIZE_DIVISIBILITY
    return (int(math.ceil(height / d) * d), int(math.ceil(width / d) * d))


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear half-pixel resize without antialiasing, like ``F.interpolate(align_corners=False)``.

    ``image`` is ``[H, W, C]`` (any dtype OpenCV accepts); the dtype is preserved. OpenCV's
    INTER_LINEAR uses the same half-pixel sampling and does not antialias when downscaling.
    """
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def pad_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pads ``[H, W, 3]`` uint8 BGR at the bottom/right with ``PAD_VALUE_BGR`` to ``height x width``."""
    h, w = image.shape[:2]
    if h > height or w > width:
        raise ValueError(f"cannot pad a {h}x{w} image to {height}x{width}")
    out = np.empty((height, width, image.shape[2]), dtype=image.dtype)
    out[...] = np.asarray(PAD_VALUE_BGR, dtype=image.dtype)
    out[:h, :w] = image
    return out


def preprocess_frames(frames_bgr: np.ndarray, min_dim: int, max_dim: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Resizes and pads a clip for the network.

    Args:
      frames_bgr: ``[T, H, W, 3]`` uint8 BGR frames of one video.
      min_dim, max_dim: the resize rule's limits.

    Returns:
      ``([T, Hp, Wp, 3] uint8, (new_h, new_w))`` where ``(new_h, new_w)`` is the resized size before
      padding (needed to crop outputs back) and ``Hp, Wp`` are multiples of 32.
    """
    frames_bgr = np.asarray(frames_bgr)
    if frames_bgr.ndim != 4 or frames_bgr.shape[-1] != 3:
        raise ValueError(f"expected frames of shape [T, H, W, 3], got {frames_bgr.shape}")
    new_h, new_w = compute_resize_dims(frames_bgr.shape[1], frames_bgr.shape[2], min_dim, max_dim)
    pad_h, pad_w = padded_dims(new_h, new_w)
    out = np.stack([pad_image(resize_image(f, new_h, new_w), pad_h, pad_w) for f in frames_bgr])
    return out, (new_h, new_w)


def normalize_images(images, xp=np):
    """Mean-subtracts uint8 BGR images ``[..., 3]`` to float32; works with NumPy or ``jax.numpy``."""
    return images.astype(xp.float32) - xp.asarray(PIXEL_MEAN_BGR, dtype=xp.float32)
