"""Image -> pseudo-video augmentation and clip-level flips (seed Sec. II, spec §5.5).

A static image (COCO, Pascal VOC, Mapillary) becomes a clip of T frames: frame 0 is the image
itself, every other frame an *independent* random transformation of it (never cumulative), and the
frames are then shuffled in time. Two recipes:

* ``"seed"`` (the supplementary's): affine with rotation U(-10, 10) deg, translation U(-0.1, 0.1) of
  the image size drawn independently per axis, scale U(0.8, 1.2); camera motion blur with p = 0.25
  (kernel 9 or 11, random angle: the supplementary gives no probability, so the official one is used);
  hue and saturation offsets U{-5..5}, applied in the image's real colour space (BGR).
* ``"official"`` (spec §5.5): SomeOf(1..2) of [Add(-40..40), AddToHueAndSaturation(-5..5) with
  imgaug's RGB assumption on a BGR image (QUIRK kept)]; PerspectiveTransform(0.08); Affine with one
  translation U(-0.1, 0.1) used for both axes and rotation U(-12, 12) (COCO) / U(-10, 10) (others);
  motion blur with p = 0.25 (COCO, VOC) or 0 (Mapillary). Masks travel as one label map in which a
  later instance wins and the ignore region wins over all (frames 1..T-1 only).

The seed recipe keeps overlapping masks exact by warping one bit per mask: masks are bit-packed into
uint8 channels and warped with nearest-neighbour interpolation, which copies values and therefore
never mixes bits. Pixels that leave the frame are tracked with a validity channel that goes through
the same geometric augmenter (blur included); they are set to ``PAD_VALUE_BGR`` (the mean colour, i.e.
zero network input) and act as background, not ignore (spec §5.5).

All randomness comes from the caller's ``np.random.Generator``: parameters are drawn here and passed
to imgaug as constants (imgaug's own RNG only draws the perspective corners, seeded from ``rng``).
"""

from __future__ import annotations

import imgaug.augmenters as iaa
import numpy as np
from imgaug.augmentables.segmaps import SegmentationMapsOnImage

from stemseg_jax.preprocessing import PAD_VALUE_BGR

RECIPES = ("seed", "official")
BLUR_PROB = {"mapillary": 0.0}  # every other image dataset: 0.25
DEFAULT_BLUR_PROB = 0.25
BLUR_KERNELS = (9, 11)


def _rotation_limit(recipe: str, source_format: str) -> float:
    if recipe == "official" and source_format == "coco":
        return 12.0
    return 10.0


def _motion_blur(rng: np.random.Generator, source_format: str):
    if rng.random() >= BLUR_PROB.get(source_format, DEFAULT_BLUR_PROB):
        return None
    return iaa.MotionBlur(
        k=int(rng.choice(BLUR_KERNELS)), angle=float(rng.uniform(0, 360)), direction=float(rng.uniform(-1, 1))
    )


def _frame_augmenters(rng: np.random.Generator, recipe: str, source_format: str):
    """Draws one frame's parameters: returns ``(photometric or None, geometric)`` imgaug augmenters."""
    rot = _rotation_limit(recipe, source_format)
    if recipe == "seed":
        photometric = iaa.AddToHueAndSaturation(
            value_hue=int(rng.integers(-5, 6)), value_saturation=int(rng.integers(-5, 6)), from_colorspace="BGR"
        )
        geometric = [
            iaa.Affine(
                scale=float(rng.uniform(0.8, 1.2)),
                translate_percent={"x": float(rng.uniform(-0.1, 0.1)), "y": float(rng.uniform(-0.1, 0.1))},
                rotate=float(rng.uniform(-rot, rot)),
                order=1,
                cval=0,
            )
        ]
    else:
        ops = [iaa.Add(int(rng.integers(-40, 41))), iaa.AddToHueAndSaturation(int(rng.integers(-5, 6)))]
        order = rng.permutation(2)[: int(rng.integers(1, 3))]
        photometric = iaa.Sequential([ops[i] for i in order])
        shift = float(rng.uniform(-0.1, 0.1))  # imgaug's tuple semantics: one value for x and y
        geometric = [
            iaa.PerspectiveTransform(scale=0.08, keep_size=True, seed=int(rng.integers(2**31))),
            iaa.Affine(
                translate_percent={"x": shift, "y": shift}, rotate=float(rng.uniform(-rot, rot)), order=1, cval=0
            ),
        ]
    blur = _motion_blur(rng, source_format)
    if blur is not None:
        geometric.append(blur)
    return photometric, iaa.Sequential(geometric)


def _pack_bits(masks: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` bool -> ``[H, W, ceil(N / 8)]`` uint8, bit k of channel c = mask 8c + k."""
    return np.packbits(masks, axis=0, bitorder="little").transpose(1, 2, 0)


def _unpack_bits(packed: np.ndarray, count: int) -> np.ndarray:
    bits = np.unpackbits(packed.transpose(2, 0, 1).astype(np.uint8), axis=0, count=count, bitorder="little")
    return bits.astype(bool)


def _label_map(masks: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """Official single label map: instance i -> i + 1 (later wins), ignore -> I + 1 (wins over all)."""
    labels = np.zeros(ignore.shape, np.int32)
    for i, m in enumerate(masks):
        labels[m] = i + 1
    labels[ignore] = len(masks) + 1
    return labels[..., None]


def image_to_clip(
    image: np.ndarray,
    masks: np.ndarray,
    ignore: np.ndarray,
    num_frames: int,
    rng: np.random.Generator,
    *,
    recipe: str = "seed",
    source_format: str = "coco",
    photometric: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Turns one image into a pseudo-video of ``num_frames`` frames.

    Args:
      image: ``[H, W, 3]`` uint8 BGR.
      masks: ``[I, H, W]`` bool instance masks.
      ignore: ``[H, W]`` bool ignore region.
      num_frames: T.
      rng: source of all randomness.
      recipe: ``"seed"`` or ``"official"`` (module docstring).
      source_format: the dataset's reader format (``"coco"``, ``"pascal_voc"``, ``"mapillary"``);
        selects the official rotation range and blur probability.
      photometric: False skips the colour changes (for tests that read masks back from colours).

    Returns:
      ``(images [T, H, W, 3] uint8, masks [I, T, H, W] bool, ignore [T, H, W] bool,
      invalid [T, H, W] bool)``; invalid pixels already hold ``PAD_VALUE_BGR``.
    """
    if recipe not in RECIPES:
        raise ValueError(f"config.data.augmentation must be one of {RECIPES}, got {recipe!r}")
    image = np.ascontiguousarray(image, dtype=np.uint8)
    masks = np.asarray(masks, dtype=bool)
    ignore = np.asarray(ignore, dtype=bool)
    h, w = image.shape[:2]
    if masks.shape[1:] != (h, w) or ignore.shape != (h, w):
        raise ValueError(f"mask shapes {masks.shape}, {ignore.shape} do not match the image {image.shape}")
    n = masks.shape[0]
    out_img = np.empty((num_frames, h, w, 3), np.uint8)
    out_masks = np.empty((n, num_frames, h, w), bool)
    out_ignore = np.empty((num_frames, h, w), bool)
    out_invalid = np.zeros((num_frames, h, w), bool)
    out_img[0], out_masks[:, 0], out_ignore[0] = image, masks, ignore

    if recipe == "seed":
        seg = _pack_bits(np.concatenate([masks, ignore[None]], axis=0))
    else:
        seg = _label_map(masks, ignore)
    segmap = SegmentationMapsOnImage(seg.astype(np.int32), shape=image.shape)
    pad = np.asarray(PAD_VALUE_BGR, np.uint8)
    for t in range(1, num_frames):
        photo, geo = _frame_augmenters(rng, recipe, source_format)
        frame = photo(image=image) if photometric else image
        # The validity channel rides along as a 4th image channel, so it sees exactly the same warp.
        with_valid = np.concatenate([frame, np.full((h, w, 1), 255, np.uint8)], axis=2)
        warped, warped_seg = geo(image=with_valid, segmentation_maps=segmap)
        invalid = warped[..., 3] < 128
        frame = warped[..., :3]
        frame[invalid] = pad
        seg_t = warped_seg.get_arr()
        if recipe == "seed":
            bits = _unpack_bits(seg_t, n + 1)
            out_masks[:, t], out_ignore[t] = bits[:n], bits[n]
        else:
            labels = seg_t[..., 0]
            out_masks[:, t] = labels[None] == np.arange(1, n + 1)[:, None, None]
            out_ignore[t] = labels == n + 1
        out_img[t], out_invalid[t] = frame, invalid

    order = rng.permutation(num_frames)
    return out_img[order], out_masks[:, order], out_ignore[order], out_invalid[order]


def hflip_clip(
    images: np.ndarray, masks: np.ndarray, ignore: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flips a whole clip horizontally: ``images [T, H, W, 3]``, ``masks [I, T, H, W]``, ``ignore [T, H, W]``."""
    return (
        np.ascontiguousarray(images[:, :, ::-1]),
        np.ascontiguousarray(masks[..., ::-1]),
        np.ascontiguousarray(ignore[..., ::-1]),
    )
