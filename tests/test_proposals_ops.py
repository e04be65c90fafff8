"""Mask R-CNN ops (stemseg_jax.proposals.ops) against torchvision on random inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image

from stemseg_jax.proposals import ops


def _random_boxes(rng, n, size=100.0, min_wh=0.5, max_wh=40.0):
    xy = rng.uniform(-10, size, (n, 2))
    wh = rng.uniform(min_wh, max_wh, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_box_iou_and_clip_and_small():
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 30), _random_boxes(rng, 20)
    with jax.enable_x64(True):
        ours = np.asarray(ops.box_iou(jnp.asarray(a), jnp.asarray(b)))
    ref = torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
    assert (ref > 0).sum() > 10  # the boxes do overlap
    clipped = np.asarray(ops.clip_boxes(jnp.asarray(a, jnp.float32), (50, 70)))
    ref_c = torchvision.ops.clip_boxes_to_image(torch.from_numpy(a).float(), (50, 70)).numpy()
    np.testing.assert_array_equal(clipped, ref_c)
    keep = np.asarray(ops.remove_small(jnp.asarray(a), 5.0))
    ref_k = torchvision.ops.remove_small_boxes(torch.from_numpy(a), 5.0).numpy()
    np.testing.assert_array_equal(np.nonzero(keep)[0], ref_k)


def test_box_coder_matches_torchvision_and_round_trips():
    rng = np.random.default_rng(1)
    anchors = _random_boxes(rng, 50, min_wh=2.0).astype(np.float32)
    gt = _random_boxes(rng, 50, min_wh=2.0).astype(np.float32)
    weights = (10.0, 10.0, 5.0, 5.0)
    coder = det_utils.BoxCoder(weights)
    ref = coder.encode_single(torch.from_numpy(gt), torch.from_numpy(anchors)).numpy()
    ours = np.asarray(ops.encode_boxes(jnp.asarray(gt), jnp.asarray(anchors), weights))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    deltas = rng.normal(0, 2.0, (50, 4)).astype(np.float32)
    deltas[0, 2] = 50.0  # exercises the exp clamp
    ref_d = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(anchors)).numpy()
    ours_d = np.asarray(ops.decode_boxes(jnp.asarray(deltas), jnp.asarray(anchors), weights))
    np.testing.assert_allclose(ours_d, ref_d, rtol=1e-5, atol=1e-3)
    back = np.asarray(ops.decode_boxes(jnp.asarray(ours), jnp.asarray(anchors), weights))
    np.testing.assert_allclose(back, gt, rtol=1e-5, atol=1e-3)


def test_anchors_match_torchvision():
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    hw = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    strides = ops.anchor_strides((64, 96), hw)
    assert strides[-1] == (64, 48)
    gen = AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * len(sizes))
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    feats = [torch.zeros(1, 1, h, w) for h, w in hw]
    ref = gen(images, feats)[0].numpy()
    ours = np.asarray(ops.generate_anchors(hw, strides, sizes, ratios))
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("method", ["matrix", "argmax"])
def test_nms_matches_torchvision(method):
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng, 300, size=60.0).astype(np.float32)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    idx, valid = ops.nms(jnp.asarray(boxes), jnp.asarray(scores), 0.5, 400, method=method)
    idx, valid = np.asarray(idx), np.asarray(valid)
    assert 20 < len(ref) < 300
    np.testing.assert_array_equal(idx[valid], ref)
    # max_output truncates; invalid boxes neither survive nor suppress.
    idx, valid = ops.nms(jnp.asarray(boxes), jnp.asarray(scores), 0.5, 10, method=method)
    np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], ref[:10])
    mask = rng.uniform(size=300) > 0.3
    sub = np.nonzero(mask)[0]
    ref_m = sub[torchvision.ops.nms(torch.from_numpy(boxes[sub]), torch.from_numpy(scores[sub]), 0.5).numpy()]
    idx, valid = ops.nms(jnp.asarray(boxes), jnp.asarray(scores), 0.5, 400, jnp.asarray(mask), method=method)
    np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], ref_m)


@pytest.mark.parametrize("method", ["matrix", "argmax"])
def test_batched_nms_matches_torchvision(method):
    rng = np.random.default_rng(3)
    boxes = _random_boxes(rng, 200, size=50.0).astype(np.float32)
    scores = rng.uniform(0, 1, 200).astype(np.float32)
    cls = rng.integers(0, 4, 200)
    ref = torchvision.ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(cls), 0.4
    ).numpy()
    idx, valid = ops.batched_nms(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(cls), 0.4, 200, method=method)
    np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], ref)


def _torch_rois(boxes):
    return torch.cat([torch.zeros(len(boxes), 1, dtype=torch.float64), torch.from_numpy(boxes)], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_matches_torchvision(aligned):
    rng = np.random.default_rng(4)
    h, w, c = 13, 17, 3
    feat = rng.normal(size=(h, w, c))
    scale = 0.25
    boxes = _random_boxes(rng, 12, size=68.0, min_wh=1.0, max_wh=50.0)
    boxes = np.concatenate(
        [
            boxes,
            [[-20.0, -12.0, 30.0, 25.0], [50.0, 40.0, 90.0, 80.0], [10.0, 10.0, 10.5, 10.3], [-9.0, -9.0, -5.0, -3.0],
             [66.0, 50.0, 75.0, 60.0], [3.0, 7.0, 3.0, 7.0]],
        ]
    )
    ref = torchvision.ops.roi_align(
        torch.from_numpy(feat.transpose(2, 0, 1))[None], _torch_rois(boxes), (5, 4), scale, 2, aligned
    ).numpy()
    with jax.enable_x64(True):
        ours = np.asarray(ops.roi_align(jnp.asarray(feat), jnp.asarray(boxes), (5, 4), scale, 2, aligned))
    np.testing.assert_allclose(ours, ref.transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    assert np.abs(ref).max() > 0.1


def test_multilevel_roi_align_matches_torchvision():
    rng = np.random.default_rng(5)
    img = 256
    shapes = [(64, 64), (32, 32), (16, 16), (8, 8)]
    feats = [rng.normal(size=(h, w, 2)) for h, w in shapes]
    # sqrt(area) from 4 to ~1000 px so that every level (and both clamps) is used.
    xy = rng.uniform(-100, 200, (40, 2))
    side = np.exp(rng.uniform(np.log(4), np.log(1000), (40, 1)))
    wh = side * np.exp(rng.uniform(-0.5, 0.5, (40, 2)))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    x = {str(i): torch.from_numpy(f.transpose(2, 0, 1))[None] for i, f in enumerate(feats)}
    ref = pooler(x, [torch.from_numpy(boxes)], [(img, img)]).numpy()
    with jax.enable_x64(True):
        scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
        ours = np.asarray(ops.multilevel_roi_align([jnp.asarray(f) for f in feats], jnp.asarray(boxes), (7, 7), scales))
        levels = np.asarray(ops.roi_levels(jnp.asarray(boxes), scales))
    assert set(levels.tolist()) == {0, 1, 2, 3}
    np.testing.assert_allclose(ours, ref.transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)


def test_matcher_matches_torchvision():
    rng = np.random.default_rng(6)
    gt = _random_boxes(rng, 5, size=60, min_wh=5)
    anchors = _random_boxes(rng, 400, size=60, min_wh=5)
    iou = torchvision.ops.box_iou(torch.from_numpy(gt), torch.from_numpy(anchors)).float()
    for low_quality, (hi, lo) in ((True, (0.7, 0.3)), (False, (0.5, 0.5)), (True, (0.5, 0.2))):
        ref = det_utils.Matcher(hi, lo, allow_low_quality_matches=low_quality)(iou).numpy()
        ours = np.asarray(ops.match(jnp.asarray(iou.numpy()), hi, lo, low_quality))
        np.testing.assert_array_equal(ours, ref)
    # Padding gts change nothing; no valid gt -> all background.
    padded = np.concatenate([iou.numpy(), np.ones((2, 400), np.float32)])
    valid = np.array([True] * 5 + [False] * 2)
    ref = det_utils.Matcher(0.7, 0.3, True)(iou).numpy()
    np.testing.assert_array_equal(np.asarray(ops.match(jnp.asarray(padded), 0.7, 0.3, True, jnp.asarray(valid))), ref)
    none = ops.match(jnp.asarray(padded), 0.7, 0.3, True, jnp.zeros(7, bool))
    assert (np.asarray(none) == -1).all()


def test_sample_balanced_counts_and_randomness():
    labels = jnp.asarray(np.r_[np.ones(30), np.zeros(500), -np.ones(100)].astype(np.int32))
    pos, neg = ops.sample_balanced(jax.random.key(0), labels, 64, 0.25)
    pos, neg = np.asarray(pos), np.asarray(neg)
    assert pos.sum() == 16 and neg.sum() == 48
    assert pos[:30].all() == pos.all() and not pos[30:].any() and not neg[:30].any() and not neg[530:].any()
    pos2, _ = ops.sample_balanced(jax.random.key(1), labels, 64, 0.25)
    assert (np.asarray(pos2) != pos).any()
    # Few positives: all taken, negatives fill the batch.
    pos, neg = ops.sample_balanced(jax.random.key(0), labels, 200, 0.5)
    assert np.asarray(pos).sum() == 30 and np.asarray(neg).sum() == 170


def test_paste_masks_matches_torchvision():
    rng = np.random.default_rng(7)
    masks = rng.uniform(0, 1, (6, 28, 28)).astype(np.float32)
    boxes = np.array(
        [[10, 12, 60, 40], [-5, -8, 20, 30], [40, 30, 95, 75], [3.3, 4.7, 9.1, 8.2], [0, 0, 99, 79], [50, 50, 52, 51]],
        np.float32,
    )
    ref = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), (80, 100))[:, 0].numpy()
    ours = ops.paste_masks(masks, boxes, (80, 100), threshold=None)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    binary = ops.paste_masks(masks, boxes, (80, 100))
    clear = np.abs(ref - 0.5) > 1e-4
    np.testing.assert_array_equal(binary[clear], (ref > 0.5)[clear])
