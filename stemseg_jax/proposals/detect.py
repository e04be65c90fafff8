"""Building, training loss and inference of the Mask R-CNN (torchvision's GeneralizedRCNN flow).

All functions are pure and shape-static (jit them as they are; shapes come from the images and the
model's fields). Per-image steps are written for one image and vmapped over the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from stemseg_jax.proposals import losses, ops
from stemseg_jax.proposals.maskrcnn import MaskRCNN

_RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def build_maskrcnn(cfg: Mapping) -> MaskRCNN:
    """``cfg`` (``default_config()`` / ``tiny_config()`` or any mapping of ``MaskRCNN`` fields) -> model."""
    values = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    fields = {f.name for f in dataclasses.fields(MaskRCNN)} - {"parent", "name"}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown Mask R-CNN config field(s) {unknown}; known: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return MaskRCNN(**values)


def init_variables(
    model: MaskRCNN, key: jax.Array, image_hw: tuple[int, int], images: jax.Array | None = None
) -> dict:
    """Variables (``params``, ``frozen_bn``) from an init on a ``[1, H, W, 3]`` zero image (jitted).

    With ``model.calibrate_bn`` the init runs on ``images [N, H, W, 3]`` instead (required), whose batch
    statistics become the FrozenBN statistics. The parameters are drawn with the ``unsafe_rbg`` PRNG seeded
    from ``key``: XLA:CPU compiles threefry sampling for the ~200 tensors 2x slower (measured: 15 s vs 7 s
    for the tiny backbone).
    """
    if model.calibrate_bn:
        if images is None:
            raise ValueError("init_variables: calibrate_bn=True needs images to calibrate the FrozenBN statistics")
        dummy = jnp.asarray(images, jnp.float32)
    else:
        dummy = jnp.zeros((1, int(image_hw[0]), int(image_hw[1]), 3), jnp.float32)
    def init(key, dummy):
        seed = jax.random.bits(key, (4,), jnp.uint32)
        return model.init(jax.random.wrap_key_data(seed, impl="unsafe_rbg"), dummy)

    return jax.jit(init)(key, dummy)


def _anchors(model: MaskRCNN, image_hw: tuple[int, int], feats) -> jax.Array:
    feature_hw = [f.shape[1:3] for f in feats]
    strides = ops.anchor_strides(image_hw, feature_hw)
    return ops.generate_anchors(feature_hw, strides, model.anchor_sizes, model.aspect_ratios)


def _level_sizes(feats, num_anchors: int) -> list[int]:
    return [f.shape[1] * f.shape[2] * num_anchors for f in feats]


def _select_proposals(
    model: MaskRCNN, anchors, level_sizes, objectness, deltas, hw, pre_nms: int, post_nms: int
) -> tuple[jax.Array, jax.Array]:
    """torchvision ``RPN.filter_proposals`` for one image -> (``[post, 4]`` boxes, ``[post]`` valid), sorted
    by objectness: per level top ``pre_nms`` logits, decode, clip, drop small, NMS per level, top overall."""
    boxes_all, scores_all = [], []
    start = 0
    for size in level_sizes:
        k = min(pre_nms, size)
        logits, idx = jax.lax.top_k(objectness[start : start + size], k)
        boxes = ops.decode_boxes(deltas[start : start + size][idx], anchors[start : start + size][idx], _RPN_WEIGHTS)
        boxes = ops.clip_boxes(boxes, hw)
        valid = ops.remove_small(boxes, model.rpn_min_size)
        keep, keep_valid = ops.nms(boxes, logits, model.rpn_nms_thresh, min(post_nms, k), valid)
        boxes_all.append(boxes[keep])
        # Sorting by logit is sorting by sigmoid probability (monotone).
        scores_all.append(jnp.where(keep_valid, logits[keep], -jnp.inf))
        start += size
    boxes = jnp.concatenate(boxes_all)
    scores = jnp.concatenate(scores_all)
    n = min(post_nms, scores.shape[0])
    top, idx = jax.lax.top_k(scores, n)
    return boxes[idx], top > -jnp.inf


def _gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - idx.ndim)), axis=idx.ndim - 1)


def _pool(model: MaskRCNN, feats, boxes: jax.Array, size: int) -> jax.Array:
    """P2..P5 ``[N, H_l, W_l, C]``, ``boxes [N, R, 4]`` -> ``[N, R, size, size, C]`` (MultiScaleRoIAlign)."""
    return jax.vmap(
        lambda f, b: ops.multilevel_roi_align(f, b, (size, size), model.roi_scales, model.roi_sampling_ratio)
    )(tuple(feats[:4]), boxes)


def _image_hw(targets: Mapping, images: jax.Array) -> jax.Array:
    if "image_hw" in targets:
        return jnp.asarray(targets["image_hw"], jnp.int32)
    return jnp.tile(jnp.asarray(images.shape[1:3], jnp.int32)[None], (images.shape[0], 1))


def loss_fn(params, variables_rest: Mapping, model: MaskRCNN, images: jax.Array, targets: Mapping, key: jax.Array):
    """Training loss of a batch -> ``(loss, metrics)``; the sum of torchvision's five losses.

    ``images [N, H, W, 3]`` float32 mean-subtracted BGR, H, W multiples of 32. ``targets``: ``boxes [N, G,
    4]`` xyxy input pixels, ``classes [N, G]`` int32 (0 = padding slot), ``masks [N, G, H, W]``, and
    optionally ``image_hw [N, 2]`` (unpadded sizes that proposals are clipped to; default the padded size).
    """
    for name in ("boxes", "classes", "masks"):
        if name not in targets:
            raise ValueError(f"targets lacks the field {name!r} (needs boxes, classes, masks)")
    variables = {"params": params, **variables_rest}
    n, h, w = images.shape[:3]
    gt_boxes = jnp.asarray(targets["boxes"], jnp.float32)
    gt_classes = jnp.asarray(targets["classes"], jnp.int32)
    gt_masks = jnp.asarray(targets["masks"])
    if gt_masks.shape[2:] != (h, w):
        raise ValueError(f"targets['masks'] must be [N, G, {h}, {w}] (input resolution), got {gt_masks.shape}")
    gt_valid = gt_classes > 0
    hw = _image_hw(targets, images)
    feats, objectness, deltas = model.apply(variables, images, method=MaskRCNN.rpn_forward)
    anchors = _anchors(model, (h, w), feats)
    level_sizes = _level_sizes(feats, len(model.aspect_ratios))
    k_rpn, k_roi = jax.random.split(key)

    # ---- RPN targets (torchvision assign_targets_to_anchors + fg_bg_sampler)
    def rpn_targets(boxes, valid, k):
        matched = ops.match(ops.box_iou(boxes, anchors), model.rpn_fg_iou_thresh, model.rpn_bg_iou_thresh, True, valid)
        labels = jnp.where(matched >= 0, 1, jnp.where(matched == -1, 0, -1))
        reg = ops.encode_boxes(boxes[jnp.maximum(matched, 0)], anchors, _RPN_WEIGHTS)
        pos, neg = ops.sample_balanced(k, labels, model.rpn_batch_size_per_image, model.rpn_positive_fraction)
        return jnp.where(pos[:, None], reg, 0.0), pos, neg

    rpn_reg, rpn_pos, rpn_neg = jax.vmap(rpn_targets)(gt_boxes, gt_valid, jax.random.split(k_rpn, n))
    loss_objectness, loss_rpn_box = losses.rpn_loss(
        objectness, deltas, rpn_reg, rpn_pos, rpn_neg, model.rpn_loss_beta
    )

    # ---- proposals (no gradient, as torchvision detaches them) + gt boxes
    select = lambda o, d, s: _select_proposals(  # noqa: E731
        model, anchors, level_sizes, o, d, s, model.rpn_pre_nms_top_n_train, model.rpn_post_nms_top_n_train
    )
    proposals, prop_valid = jax.vmap(select)(
        jax.lax.stop_gradient(objectness), jax.lax.stop_gradient(deltas), hw
    )
    proposals = jnp.concatenate([proposals, gt_boxes], axis=1)
    prop_valid = jnp.concatenate([prop_valid, gt_valid], axis=1)
    num_props = proposals.shape[1]
    r_box = min(model.box_batch_size_per_image, num_props)
    r_mask = min(int(model.box_batch_size_per_image * model.box_positive_fraction), num_props)

    def roi_targets(props, pvalid, boxes, classes, gvalid, k):
        matched = ops.match(
            ops.box_iou(boxes, props), model.box_fg_iou_thresh, model.box_bg_iou_thresh, False, gvalid
        )
        gt_idx = jnp.maximum(matched, 0)
        labels = jnp.where(matched >= 0, classes[gt_idx], jnp.where(matched == -1, 0, -1))
        labels = jnp.where(pvalid, labels, -1)
        pos, neg = ops.sample_balanced(k, labels, model.box_batch_size_per_image, model.box_positive_fraction)
        (box_idx,) = jnp.nonzero(pos | neg, size=r_box, fill_value=0)
        box_sampled = jnp.arange(r_box) < (pos | neg).sum()
        (mask_idx,) = jnp.nonzero(pos, size=r_mask, fill_value=0)
        mask_pos = jnp.arange(r_mask) < pos.sum()
        reg = ops.encode_boxes(boxes[gt_idx[box_idx]], props[box_idx], model.box_weights)
        reg = jnp.where((box_sampled & (labels[box_idx] > 0))[:, None], reg, 0.0)
        return dict(
            box_idx=box_idx, box_sampled=box_sampled, box_labels=jnp.where(box_sampled, labels[box_idx], 0),
            box_reg=reg, mask_idx=mask_idx, mask_pos=mask_pos, mask_labels=labels[mask_idx],
            mask_gt=gt_idx[mask_idx],
        )

    t = jax.vmap(roi_targets)(
        proposals, prop_valid, gt_boxes, gt_classes, gt_valid, jax.random.split(k_roi, n)
    )
    box_rois = _gather_rows(proposals, t["box_idx"])
    mask_rois = _gather_rows(proposals, t["mask_idx"])

    # ---- box head
    s = model.roi_output_size
    pooled = _pool(model, feats, box_rois, s)
    cls_logits, box_deltas = model.apply(
        variables, pooled.reshape((n * r_box,) + pooled.shape[2:]), method=MaskRCNN.box_forward
    )
    loss_classifier, loss_box_reg = losses.box_head_loss(
        cls_logits.reshape(n, r_box, -1), box_deltas.reshape(n, r_box, -1, 4), t["box_labels"], t["box_reg"],
        t["box_sampled"], model.box_loss_beta,
    )

    # ---- mask head (positives only)
    m = model.mask_roi_output_size
    pooled = _pool(model, feats, mask_rois, m)
    mask_logits = model.apply(variables, pooled.reshape((n * r_mask,) + pooled.shape[2:]), method=MaskRCNN.mask_forward)
    mask_logits = mask_logits.reshape((n, r_mask) + mask_logits.shape[1:])
    mask_targets = jax.vmap(
        lambda g, b, i: ops.crop_masks(g, b, i, model.mask_resolution, model.mask_target_sampling_ratio)
    )(gt_masks, jax.lax.stop_gradient(mask_rois), t["mask_gt"])
    loss_mask = losses.mask_loss(mask_logits, t["mask_labels"], mask_targets, t["mask_pos"])

    total = loss_objectness + loss_rpn_box + loss_classifier + loss_box_reg + loss_mask
    metrics = dict(
        loss=total, loss_objectness=loss_objectness, loss_rpn_box_reg=loss_rpn_box, loss_classifier=loss_classifier,
        loss_box_reg=loss_box_reg, loss_mask=loss_mask, rpn_positives=rpn_pos.sum().astype(jnp.float32),
        roi_positives=t["mask_pos"].sum().astype(jnp.float32),
        proposals=prop_valid.sum().astype(jnp.float32) / n,
    )
    return total, metrics


def detect(variables: Mapping, model: MaskRCNN, images: jax.Array, image_hw: jax.Array) -> dict:
    """Inference as torchvision's eval mode, up to (not including) pasting the masks.

    ``images [N, H, W, 3]`` (as for ``loss_fn``), ``image_hw [N, 2]`` unpadded sizes -> dict(``boxes [N, D,
    4]``, ``scores [N, D]``, ``classes [N, D]`` int32 >= 1, ``masks [N, D, 28, 28]`` probabilities of the
    predicted class, ``valid [N, D]``) sorted by score; D = ``detections_per_image``. Paste the masks with
    ``ops.paste_masks``.
    """
    n, h, w = images.shape[:3]
    hw = jnp.asarray(image_hw, jnp.int32)
    feats, objectness, deltas = model.apply(variables, images, method=MaskRCNN.rpn_forward)
    anchors = _anchors(model, (h, w), feats)
    level_sizes = _level_sizes(feats, len(model.aspect_ratios))
    select = lambda o, d, s: _select_proposals(  # noqa: E731
        model, anchors, level_sizes, o, d, s, model.rpn_pre_nms_top_n_test, model.rpn_post_nms_top_n_test
    )
    proposals, prop_valid = jax.vmap(select)(objectness, deltas, hw)
    r = proposals.shape[1]
    k = model.num_classes
    s = model.roi_output_size
    pooled = _pool(model, feats, proposals, s)
    cls_logits, box_deltas = model.apply(
        variables, pooled.reshape((n * r,) + pooled.shape[2:]), method=MaskRCNN.box_forward
    )
    scores = jax.nn.softmax(cls_logits.reshape(n, r, k), axis=-1)
    boxes = ops.decode_boxes(box_deltas.reshape(n, r, k, 4), proposals[:, :, None, :], model.box_weights)
    d = model.detections_per_image

    def postprocess(boxes, scores, pvalid, size):
        boxes = ops.clip_boxes(boxes, size)[:, 1:].reshape(-1, 4)
        labels = jnp.broadcast_to(jnp.arange(1, k, dtype=jnp.int32), (r, k - 1)).reshape(-1)
        valid = jnp.broadcast_to(pvalid[:, None], (r, k - 1)).reshape(-1)
        scores = scores[:, 1:].reshape(-1)
        valid = valid & (scores > model.box_score_thresh) & ops.remove_small(boxes, model.box_min_size)
        keep, keep_valid = ops.batched_nms(boxes, scores, labels, model.box_nms_thresh, d, valid)
        return boxes[keep], jnp.where(keep_valid, scores[keep], 0.0), labels[keep], keep_valid

    det_boxes, det_scores, det_classes, det_valid = jax.vmap(postprocess)(boxes, scores, prop_valid, hw)
    m = model.mask_roi_output_size
    pooled = _pool(model, feats, det_boxes, m)
    mask_logits = model.apply(variables, pooled.reshape((n * d,) + pooled.shape[2:]), method=MaskRCNN.mask_forward)
    mask_logits = mask_logits.reshape((n, d) + mask_logits.shape[1:])
    masks = jax.nn.sigmoid(jnp.take_along_axis(mask_logits, det_classes[:, :, None, None, None], axis=-1)[..., 0])
    return dict(
        boxes=det_boxes, scores=det_scores, classes=det_classes, masks=masks * det_valid[:, :, None, None],
        valid=det_valid,
    )

