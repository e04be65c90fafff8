"""Mask R-CNN model, losses and detection (stemseg_jax.proposals) on tiny shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from stemseg_jax.proposals import build_maskrcnn, detect, init_variables, loss_fn, ops, paste_masks, tiny_config
from stemseg_jax.proposals import losses as L

H = W = 128
GT_BOXES = np.array([[30, 20, 90, 60], [10, 70, 50, 120]], np.float32)
STEPS = 60


def _scene():
    rng = np.random.default_rng(0)
    img = np.full((1, H, W, 3), -40.0, np.float32) + rng.normal(0, 5, (1, H, W, 3)).astype(np.float32)
    masks = np.zeros((1, 2, H, W), np.uint8)
    for i, ((x0, y0, x1, y1), colour) in enumerate(zip(GT_BOXES.astype(int), [(60, -20, 10), (-10, 50, 70)])):
        img[0, y0:y1, x0:x1] = colour
        masks[0, i, y0:y1, x0:x1] = 1
    targets = dict(boxes=jnp.asarray(GT_BOXES[None]), classes=jnp.asarray([[1, 2]], jnp.int32),
                   masks=jnp.asarray(masks))
    return jnp.asarray(img), targets, masks


@pytest.fixture(scope="module")
def trained():
    """Tiny Mask R-CNN overfitted on one image with two rectangles by SGD with momentum (60 steps)."""
    cfg = tiny_config()
    cfg.calibrate_bn = True
    model = build_maskrcnn(cfg)
    images, targets, masks = _scene()
    variables = init_variables(model, jax.random.key(0), (H, W), images)
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    @jax.jit
    def step(p, mom, key):
        (_, metrics), g = jax.value_and_grad(
            lambda p: loss_fn(p, rest, model, images, targets, key), has_aux=True
        )(p)
        norm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g)))
        clip = jnp.minimum(1.0, 10.0 / norm)
        mom = jax.tree.map(lambda u, d: 0.9 * u + clip * d, mom, g)
        return jax.tree.map(lambda a, u: a - 0.01 * u, p, mom), mom, metrics

    run_detect = jax.jit(lambda v, x, hw: detect(v, model, x, hw))
    hw = jnp.asarray([[H, W]], jnp.int32)
    before = run_detect(variables, images, hw)
    mom = jax.tree.map(jnp.zeros_like, params)
    history = []
    for i in range(STEPS):
        params, mom, metrics = step(params, mom, jax.random.key(i))
        history.append({k: float(v) for k, v in metrics.items()})
    after = run_detect({"params": params, **rest}, images, hw)
    return dict(model=model, before=before, after=after, history=history, masks=masks)


def test_detect_shapes(trained):
    d = trained["model"].detections_per_image
    out = trained["before"]
    assert out["boxes"].shape == (1, d, 4) and out["scores"].shape == (1, d)
    assert out["classes"].shape == (1, d) and out["classes"].dtype == jnp.int32
    assert out["masks"].shape == (1, d, 28, 28) and out["valid"].shape == (1, d) and out["valid"].dtype == bool
    valid = np.asarray(out["valid"][0])
    assert (np.asarray(out["classes"][0])[valid] >= 1).all()
    scores = np.asarray(out["scores"][0])[valid]
    assert (np.diff(scores) <= 1e-6).all() and (scores > 0.05).all()
    boxes = np.asarray(out["boxes"][0])
    assert (boxes >= 0).all() and (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()


def test_loss_decreases_and_detections_overfit(trained):
    hist = trained["history"]
    assert all(np.isfinite(h["loss"]) for h in hist)
    first = np.mean([h["loss"] for h in hist[:5]])
    last = np.mean([h["loss"] for h in hist[-5:]])
    assert last < 0.7 * first, (first, last)
    assert np.mean([h["loss_objectness"] for h in hist[-5:]]) < 0.5 * hist[0]["loss_objectness"]
    out = trained["after"]
    valid = np.asarray(out["valid"][0])
    boxes, classes = np.asarray(out["boxes"][0])[valid], np.asarray(out["classes"][0])[valid]
    scores, masks = np.asarray(out["scores"][0])[valid], np.asarray(out["masks"][0])[valid]
    iou = np.asarray(ops.box_iou(jnp.asarray(boxes), jnp.asarray(GT_BOXES)))
    pasted = paste_masks(masks, boxes, (H, W))
    for g, cls in enumerate((1, 2)):
        hits = np.nonzero((iou[:, g] > 0.5) & (classes == cls) & (scores > 0.3))[0]
        assert len(hits), f"gt {g} not found: iou {iou[:, g]}, classes {classes}, scores {scores}"
        best = hits[np.argmax(scores[hits])]
        gt = trained["masks"][0, g].astype(bool)
        mask_iou = (pasted[best] & gt).sum() / (pasted[best] | gt).sum()
        assert mask_iou > 0.5, mask_iou


def _bce(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def _smooth_l1(x, beta):
    n = np.abs(x)
    return np.where(n < beta, 0.5 * n**2 / beta, n - 0.5 * beta)


def test_losses_match_numpy_reference():
    rng = np.random.default_rng(1)
    n, a, r, k, m = 2, 50, 12, 4, 6
    obj, deltas, reg = rng.normal(size=(n, a)), rng.normal(size=(n, a, 4)), rng.normal(size=(n, a, 4))
    pos = rng.uniform(size=(n, a)) < 0.2
    neg = ~pos & (rng.uniform(size=(n, a)) < 0.5)
    logits, bdeltas = rng.normal(size=(n, r, k)) * 3, rng.normal(size=(n, r, k, 4))
    labels, breg = rng.integers(0, k, (n, r)), rng.normal(size=(n, r, 4))
    sampled = rng.uniform(size=(n, r)) < 0.7
    mlogits, mtargets = rng.normal(size=(n, r, m, m, k)) * 2, rng.uniform(size=(n, r, m, m))
    with jax.enable_x64(True):
        o, b = L.rpn_loss(*map(jnp.asarray, (obj, deltas, reg, pos, neg)), beta=1 / 9)
        c, bb = L.box_head_loss(*map(jnp.asarray, (logits, bdeltas, labels, breg, sampled)), beta=1 / 9)
        ml = L.mask_loss(*map(jnp.asarray, (mlogits, labels, mtargets, sampled & (labels > 0))))
    s = pos | neg
    np.testing.assert_allclose(float(o), _bce(obj[s], pos[s].astype(float)).mean(), rtol=1e-12)
    np.testing.assert_allclose(float(b), _smooth_l1(deltas[pos] - reg[pos], 1 / 9).sum() / s.sum(), rtol=1e-12)
    # torchvision's own cross-entropy as the classifier reference.
    ce = torch.nn.functional.cross_entropy(torch.from_numpy(logits[sampled]), torch.from_numpy(labels[sampled]))
    np.testing.assert_allclose(float(c), ce.item(), rtol=1e-12)
    p = sampled & (labels > 0)
    picked = bdeltas[p, labels[p]]
    np.testing.assert_allclose(float(bb), _smooth_l1(picked - breg[p], 1 / 9).sum() / sampled.sum(), rtol=1e-12)
    ref_mask = _bce(mlogits[p, :, :, labels[p]], mtargets[p]).mean()
    np.testing.assert_allclose(float(ml), ref_mask, rtol=1e-12)
    with jax.enable_x64(True):
        none = L.mask_loss(jnp.asarray(mlogits), jnp.asarray(labels), jnp.asarray(mtargets), jnp.zeros((n, r), bool))
    assert float(none) == 0.0


def test_crop_masks_is_torchvision_roi_align_of_the_matched_mask():
    rng = np.random.default_rng(2)
    masks = (rng.uniform(size=(3, 40, 50)) > 0.5).astype(np.uint8)
    boxes = np.array([[3.2, 4.1, 30.7, 35.0], [10.0, 0.0, 49.0, 12.5], [-5.0, 20.0, 20.0, 45.0]], np.float32)
    idx = np.array([2, 0, 1])
    ours = np.asarray(ops.crop_masks(jnp.asarray(masks), jnp.asarray(boxes), jnp.asarray(idx), 7))
    rois = torch.cat([torch.from_numpy(idx[:, None]).float(), torch.from_numpy(boxes)], dim=1)
    ref = torchvision.ops.roi_align(torch.from_numpy(masks[:, None]).float(), rois, (7, 7), 1.0, 2, False)[:, 0]
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)  # float32 summation order


def test_bad_config_and_targets_raise():
    with pytest.raises(ValueError, match="unknown Mask R-CNN config field"):
        build_maskrcnn(dict(tiny_config().to_dict(), backbone_dpeth=50))
    model = build_maskrcnn(tiny_config())
    with pytest.raises(ValueError, match="masks"):
        loss_fn({}, {}, model, jnp.zeros((1, 64, 64, 3)), dict(boxes=jnp.zeros((1, 1, 4)),
                classes=jnp.ones((1, 1), jnp.int32)), jax.random.key(0))
    cfg = tiny_config()
    cfg.calibrate_bn = True
    with pytest.raises(ValueError, match="calibrate_bn"):
        init_variables(build_maskrcnn(cfg), jax.random.key(0), (64, 64))


@pytest.mark.slow
def test_from_torchvision_matches_torchvision_heads():
    """Random torchvision Mask R-CNN weights -> ours: RPN, box-head and mask-head outputs agree (~25 s)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from stemseg_jax.proposals.convert import from_torchvision, torchvision_config
    from stemseg_jax.proposals.detect import _pool
    from stemseg_jax.proposals.maskrcnn import MaskRCNN

    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    with torch.no_grad():  # non-trivial BN statistics and biases
        for mod in tv.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.0)
                mod.bias.uniform_(-0.1, 0.1)
        for name, p in tv.named_parameters():
            if name.endswith("bias") and not name.startswith("backbone.body"):
                p.uniform_(-0.1, 0.1)
    model = build_maskrcnn(torchvision_config())
    variables = jax.tree.map(jnp.asarray, from_torchvision(tv.state_dict()))
    expected = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), (64, 64)))
    assert jax.tree.map(lambda x: x.shape, variables) == jax.tree.map(lambda x: x.shape, expected)

    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 64, 64, 3)).astype(np.float32)
    boxes = np.array([[[2.0, 3.0, 40.0, 30.0], [10.0, 12.0, 63.0, 60.0], [0.0, 0.0, 20.0, 11.0]]], np.float32)
    with torch.no_grad():
        x = torch.from_numpy(image.transpose(0, 3, 1, 2))
        feats = tv.backbone(x)
        obj, deltas = tv.rpn.head(list(feats.values()))
        ref_obj = torch.cat([o.permute(0, 2, 3, 1).reshape(1, -1) for o in obj], 1).numpy()
        ref_deltas = torch.cat([d.permute(0, 2, 3, 1).reshape(1, -1, 4) for d in deltas], 1).numpy()
        tb = [torch.from_numpy(boxes[0])]
        pooled = tv.roi_heads.box_roi_pool(feats, tb, [(64, 64)])
        ref_cls, ref_box = tv.roi_heads.box_predictor(tv.roi_heads.box_head(pooled))
        mask_feats = tv.roi_heads.mask_head(tv.roi_heads.mask_roi_pool(feats, tb, [(64, 64)]))
        ref_mask = tv.roi_heads.mask_predictor(mask_feats).permute(0, 2, 3, 1).numpy()

    def ours(v, img, b):
        f, o, d = model.apply(v, img, method=MaskRCNN.rpn_forward)
        cls, box = model.apply(v, _pool(model, f, b, 7)[0], method=MaskRCNN.box_forward)
        mask = model.apply(v, _pool(model, f, b, 14)[0], method=MaskRCNN.mask_forward)
        return o, d, cls, box, mask

    o, d, cls, box, mask = jax.jit(ours)(variables, jnp.asarray(image), jnp.asarray(boxes))
    np.testing.assert_allclose(np.asarray(o), ref_obj, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(d), ref_deltas, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(cls), ref_cls.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(box).reshape(3, -1), ref_box.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(mask), ref_mask, atol=1e-4, rtol=1e-4)
    assert np.abs(ref_obj).max() > 1e-3 and np.abs(ref_mask).max() > 1e-3
