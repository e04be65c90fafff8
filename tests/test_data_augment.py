"""Image -> pseudo-video augmentation (seed Sec. II, spec §5.5), clip flips and the duplicator (§5.4)."""

import numpy as np
import pytest

from stemseg_jax.data import augment, duplicator
from stemseg_jax.preprocessing import PAD_VALUE_BGR

H, W = 120, 160
# Colours far from each other and from PAD_VALUE_BGR, so a pixel's colour names its mask.
COLOURS = np.array([[20, 20, 20], [250, 30, 30], [30, 250, 30], [30, 30, 250], [240, 240, 240]], np.int32)


def _scene():
    """Background, three instances (0 and 1 overlap in their masks; the image shows 1 on top) and ignore."""
    masks = np.zeros((3, H, W), bool)
    masks[0, 20:70, 20:80] = True
    masks[1, 50:100, 60:130] = True
    masks[2, 15:45, 100:150] = True
    ignore = np.zeros((H, W), bool)
    ignore[95:115, 10:50] = True
    labels = np.zeros((H, W), int)
    for i in range(3):
        labels[masks[i]] = i + 1
    labels[ignore] = 4
    image = COLOURS[labels].astype(np.uint8)
    return image, masks, ignore, labels


def _colour_label(image):
    """Label of the nearest code colour per pixel, and the distance to it."""
    d = np.abs(image[..., None, :].astype(np.int32) - COLOURS[None, None]).max(axis=-1)
    return d.argmin(axis=-1), d.min(axis=-1)


@pytest.mark.parametrize("recipe", augment.RECIPES)
def test_masks_stay_aligned_with_the_image(recipe):
    image, masks, ignore, labels = _scene()
    for seed in range(3):
        rng = np.random.default_rng(seed)
        imgs, out_masks, out_ignore, invalid = augment.image_to_clip(
            image, masks, ignore, 6, rng, recipe=recipe, photometric=False
        )
        assert imgs.shape == (6, H, W, 3) and out_masks.shape == (3, 6, H, W) and out_ignore.shape == (6, H, W)
        originals = [t for t in range(6) if np.array_equal(imgs[t], image)]
        assert len(originals) == 1  # frame 0 is kept as is, then shuffled to some position
        t0 = originals[0]
        np.testing.assert_array_equal(out_masks[:, t0], masks)
        np.testing.assert_array_equal(out_ignore[t0], ignore)
        assert not invalid[t0].any()
        for t in range(6):
            if t == t0:
                continue
            lab, dist = _colour_label(imgs[t])
            clean = (dist < 25) & ~invalid[t]  # away from blur and interpolation seams
            # the top-most layer shown in the image: instance 2 over 1 over 0, ignore over all
            top = np.zeros((H, W), int)
            for i in range(3):
                top[out_masks[i, t]] = i + 1
            top[out_ignore[t]] = 4
            agree = (top == lab)[clean].mean()
            assert agree > 0.9, (recipe, seed, t, agree)
            for i in range(3):  # every instance still covers roughly its own colour
                if out_masks[i, t].sum() > 50:
                    assert (lab[out_masks[i, t] & clean] >= i + 1).mean() > 0.85


def test_seed_recipe_keeps_mask_overlaps_official_label_map_does_not():
    image, masks, ignore, _ = _scene()
    overlap = masks[0] & masks[1]
    assert overlap.any()
    imgs, m, ign, _ = augment.image_to_clip(image, masks, ignore, 4, np.random.default_rng(0), recipe="seed")
    for t in range(4):
        assert (m[0, t] & m[1, t]).sum() > 0.5 * overlap.sum()
    _, m, ign, _ = augment.image_to_clip(image, masks, ignore, 4, np.random.default_rng(0), recipe="official")
    for t in range(4):
        if not np.array_equal(m[:, t], masks):  # augmented frames: one label per pixel
            assert not (m[0, t] & m[1, t]).any()
            assert not (m[:, t] & ign[t]).any()


def test_invalid_pixels_are_mean_colour_and_not_ignore():
    image, masks, ignore, _ = _scene()
    image = np.full_like(image, 200)  # no pixel of the image has the pad colour
    imgs, m, ign, invalid = augment.image_to_clip(image, masks, ignore, 8, np.random.default_rng(3), recipe="seed")
    assert invalid.any(axis=(1, 2)).sum() >= 5  # rotations, shifts, zoom-outs leave the frame somewhere
    np.testing.assert_array_equal(imgs[invalid], np.broadcast_to(PAD_VALUE_BGR, (invalid.sum(), 3)))
    padded_colour = (imgs == np.asarray(PAD_VALUE_BGR, np.uint8)).all(axis=-1)
    np.testing.assert_array_equal(padded_colour, invalid)
    assert not (ign & invalid).any() and not (m.any(axis=0) & invalid).any()


def test_augmentation_is_deterministic_for_a_seed_and_varies_across_seeds():
    image, masks, ignore, _ = _scene()
    a = augment.image_to_clip(image, masks, ignore, 4, np.random.default_rng(7), recipe="official")
    b = augment.image_to_clip(image, masks, ignore, 4, np.random.default_rng(7), recipe="official")
    c = augment.image_to_clip(image, masks, ignore, 4, np.random.default_rng(8), recipe="official")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="augmentation"):
        augment.image_to_clip(image, masks, ignore, 4, np.random.default_rng(0), recipe="fancy")


def test_hflip_clip_flips_every_frame_consistently():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 5, 7, 3), dtype=np.uint8)
    masks = rng.random((2, 3, 5, 7)) > 0.5
    ignore = rng.random((3, 5, 7)) > 0.5
    fi, fm, fg = augment.hflip_clip(images, masks, ignore)
    for t in range(3):
        np.testing.assert_array_equal(fi[t], images[t, :, ::-1])
        np.testing.assert_array_equal(fm[:, t], masks[:, t, :, ::-1])
        np.testing.assert_array_equal(fg[t], ignore[t, :, ::-1])


# ------------------------------------------------------------------------------------------ duplicator


def _object_clip(boxes, h=100, w=200, num_frames=None):
    """A textured object (left half red, right half blue) at the given ``(x0, y0, x1, y1)`` per frame."""
    num_frames = num_frames or len(boxes)
    images = np.full((num_frames, h, w, 3), 90, np.uint8)
    mask = np.zeros((num_frames, h, w), bool)
    for t, box in enumerate(boxes):
        if box is None:
            continue
        x0, y0, x1, y1 = box
        mask[t, y0:y1, x0:x1] = True
        xm = (x0 + x1) // 2
        images[t, y0:y1, x0:xm] = (0, 0, 255)
        images[t, y0:y1, xm:x1] = (255, 0, 0)
    return images, mask


def _centroid_x(m):
    return np.nonzero(m)[1].mean()


def test_duplicator_copies_with_a_consistent_shift():
    boxes = [(80, 30, 110, 60), (82, 31, 112, 61), None, (85, 32, 115, 62)]
    images, mask = _object_clip(boxes)
    for seed in range(6):
        out = duplicator.duplicate_single_instance(images, mask, np.random.default_rng(seed))
        assert out is not None
        out_images, masks = out
        assert masks.shape == (2,) + mask.shape
        np.testing.assert_array_equal(out_images[2], images[2])  # frame without the instance: untouched
        assert not masks[:, 2].any()
        directions = set()
        for t in (0, 1, 3):
            x0, y0, x1, y1 = boxes[t]
            copy = masks[1, t]
            assert abs(copy.sum() - mask[t].sum()) <= 0.15 * mask[t].sum()  # the whole object, moved
            dx = _centroid_x(copy) - _centroid_x(mask[t])
            dy = np.nonzero(copy)[0].mean() - np.nonzero(mask[t])[0].mean()
            assert 0.7 * (x1 - x0) <= abs(dx) <= 1.05 * (x1 - x0)
            assert abs(dy) <= 0.26 * (y1 - y0) + 1
            directions.add(np.sign(dx))
            assert not (masks[0, t] & copy).any()  # the original loses what the copy covers
            assert (masks[0, t] | copy).sum() >= mask[t].sum()
            # the pasted pixels carry the object's colours
            colours = out_images[t][copy]
            assert ((colours == (0, 0, 255)).all(axis=1) | (colours == (255, 0, 0)).all(axis=1)).mean() > 0.9
        assert len(directions) == 1  # one direction for the whole clip


def test_duplicator_direction_rules():
    rng = np.random.default_rng(0)
    # wide (> 0.4 W) and touching the left border: shifted further left
    images, mask = _object_clip([(0, 30, 100, 60), (0, 30, 100, 60)])
    for seed in range(4):
        out = duplicator.duplicate_single_instance(images, mask, np.random.default_rng(seed))
        if out is not None:
            assert _centroid_x(out[1][1, 0]) < _centroid_x(mask[0])
    # small (< 0.2 W) with its centre in the left quarter: shifted right
    images, mask = _object_clip([(10, 30, 30, 50), (12, 30, 32, 50)])
    for seed in range(4):
        _, masks = duplicator.duplicate_single_instance(images, mask, np.random.default_rng(seed))
        assert _centroid_x(masks[1, 0]) > _centroid_x(mask[0])
    # touches the left border in one frame and the right border in another: infeasible
    images, mask = _object_clip([(0, 30, 40, 60), (160, 30, 200, 60)])
    assert duplicator.duplicate_single_instance(images, mask, rng) is None
    # touches top and bottom (in different frames): no vertical shift
    images, mask = _object_clip([(60, 0, 90, 50), (60, 50, 90, 100)])
    for seed in range(4):
        _, masks = duplicator.duplicate_single_instance(images, mask, np.random.default_rng(seed))
        for t in range(2):
            np.testing.assert_array_equal(masks[1, t].any(axis=1) | mask[t].any(axis=1), mask[t].any(axis=1))


def test_duplicator_flips_the_copy_only_away_from_side_borders():
    images, mask = _object_clip([(80, 30, 110, 60)])
    flipped = 0
    for seed in range(20):
        out_images, masks = duplicator.duplicate_single_instance(images, mask, np.random.default_rng(seed))
        ys, xs = np.nonzero(masks[1, 0])
        left_colour = out_images[0, int(ys.mean()), xs.min() + 2]
        flipped += bool((left_colour == (255, 0, 0)).all())  # blue on the left: mirrored copy
    assert 3 <= flipped <= 17
    images, mask = _object_clip([(0, 30, 30, 60)])  # touches the left border: never flipped
    for seed in range(10):
        out_images, masks = duplicator.duplicate_single_instance(images, mask, np.random.default_rng(seed))
        ys, xs = np.nonzero(masks[1, 0])
        assert (out_images[0, int(ys.mean()), xs.min() + 2] == (0, 0, 255)).all()
