"""Mask R-CNN losses (torchvision's ``rpn.compute_loss``, ``fastrcnn_loss``, ``maskrcnn_loss``), fixed shapes.

Samples are given as boolean masks over fixed-size arrays; every normaliser counts the samples of the
whole batch, as torchvision does by concatenating the images' samples. With no sample a loss is 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
    """Elementwise ``0.5 x^2 / beta`` for ``|x| < beta`` else ``|x| - 0.5 beta`` (torchvision's det_utils)."""
    n = jnp.abs(x)
    if beta == 0:
        return n
    return jnp.where(n < beta, 0.5 * n**2 / beta, n - 0.5 * beta)


def _bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``max(x, 0) - x t + log(1 + exp(-|x|))``, PyTorch's stable form."""
    return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def rpn_loss(
    objectness: jax.Array,
    deltas: jax.Array,
    regression_targets: jax.Array,
    pos_mask: jax.Array,
    neg_mask: jax.Array,
    beta: float = 1.0 / 9,
) -> tuple[jax.Array, jax.Array]:
    """``objectness [N, A]`` logits, ``deltas`` / ``regression_targets [N, A, 4]``, sampled ``pos_mask`` /
    ``neg_mask [N, A]`` -> (objectness loss: BCE mean over the sampled anchors, box loss: smooth-L1 summed
    over the positives divided by the number of sampled anchors)."""
    sampled = pos_mask | neg_mask
    count = jnp.maximum(sampled.sum(), 1).astype(jnp.float32)
    bce = _bce_with_logits(objectness, pos_mask.astype(objectness.dtype))
    obj_loss = jnp.where(sampled, bce, 0.0).sum() / count
    box = smooth_l1(deltas - regression_targets, beta).sum(-1)
    box_loss = jnp.where(pos_mask, box, 0.0).sum() / count
    return obj_loss, box_loss


def box_head_loss(
    class_logits: jax.Array,
    box_deltas: jax.Array,
    labels: jax.Array,
    regression_targets: jax.Array,
    sampled: jax.Array,
    beta: float = 1.0 / 9,
) -> tuple[jax.Array, jax.Array]:
    """``class_logits [N, R, K]``, class-specific ``box_deltas [N, R, K, 4]``, ``labels [N, R]`` (0 =
    background), ``regression_targets [N, R, 4]``, ``sampled [N, R]`` -> (cross-entropy mean over the
    sampled RoIs, smooth-L1 of the label's deltas summed over the positive sampled RoIs / sample count).

    ``beta`` 1/9 is torchvision's choice (maskrcnn-benchmark: 1)."""
    count = jnp.maximum(sampled.sum(), 1).astype(jnp.float32)
    labels = jnp.where(sampled, labels, 0).astype(jnp.int32)
    logp = jax.nn.log_softmax(class_logits, axis=-1)
    ce = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    cls_loss = jnp.where(sampled, ce, 0.0).sum() / count
    picked = jnp.take_along_axis(box_deltas, labels[..., None, None], axis=-2)[..., 0, :]
    pos = sampled & (labels > 0)
    box = smooth_l1(picked - regression_targets, beta).sum(-1)
    box_loss = jnp.where(pos, box, 0.0).sum() / count
    return cls_loss, box_loss


def mask_loss(mask_logits: jax.Array, labels: jax.Array, mask_targets: jax.Array, positive: jax.Array) -> jax.Array:
    """``mask_logits [N, R, M, M, K]``, ``labels [N, R]`` (the gt class), soft ``mask_targets [N, R, M, M]``,
    ``positive [N, R]`` -> BCE of the label's channel, mean over all pixels of the positive RoIs."""
    labels = jnp.where(positive, labels, 0).astype(jnp.int32)
    picked = jnp.take_along_axis(mask_logits, labels[:, :, None, None, None], axis=-1)[..., 0]
    per_roi = _bce_with_logits(picked, mask_targets).mean(axis=(-2, -1))
    count = jnp.maximum(positive.sum(), 1).astype(jnp.float32)
    return jnp.where(positive, per_roi, 0.0).sum() / count
