"""Semantic segmentation cross-entropy and foreground BCE (spec §4.4, §4.5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def semseg_target(masks: jax.Array, instance_valid: jax.Array, category_ids: jax.Array) -> jax.Array:
    """Per-pixel class: max over valid instances of (category if the pixel is in the mask), else 0.

    Args:
      masks: ``[B, I, T, h, w]`` bool.
      instance_valid: ``[B, I]`` bool.
      category_ids: ``[B, I]`` int.

    Returns:
      ``[B, T, h, w]`` int32; overlapping instances give the higher category id (spec §4.1).
    """
    keep = masks & instance_valid[:, :, None, None, None]
    cats = category_ids.astype(jnp.int32)[:, :, None, None, None]
    return jnp.max(jnp.where(keep, cats, 0), axis=1, initial=0)


def _masked_clip_mean(values: jax.Array, keep: jax.Array) -> jax.Array:
    """``[B, ...]`` -> mean over clips of each clip's mean over kept pixels (0 for a fully ignored clip)."""
    axes = tuple(range(1, values.ndim))
    kept = jnp.sum(keep, axis=axes).astype(values.dtype)
    total = jnp.sum(jnp.where(keep, values, 0.0), axis=axes)
    per_clip = jnp.where(kept > 0, total / jnp.maximum(kept, 1.0), 0.0)
    return jnp.mean(per_clip)


def semseg_cross_entropy(
    class_logits: jax.Array, target: jax.Array, ignore: jax.Array, ignore_quirk: bool = False
) -> jax.Array:
    """Softmax cross-entropy, averaged per clip then over clips.

    Args:
      class_logits: ``[B, T, h, w, C]`` (without the foreground channel).
      target: ``[B, T, h, w]`` int in [0, C), or ``[B, T, h, w, C]`` float class shares (soft targets).
      ignore: ``[B, T, h, w]`` bool.
      ignore_quirk: False: mean over non-ignored pixels. True: the official behaviour, a plain
        mean over all pixels (the ignore mask has no effect, spec §4.4 QUIRK).

    Returns:
      Scalar (float32, or float64 for float64 logits).
    """
    log_probs = jax.nn.log_softmax(class_logits.astype(jnp.promote_types(class_logits.dtype, jnp.float32)), axis=-1)
    if target.ndim == class_logits.ndim:  # soft targets: class shares (``prepare_targets(rule="area")``)
        nll = -jnp.sum(target.astype(log_probs.dtype) * log_probs, axis=-1)
    else:
        nll = -jnp.take_along_axis(log_probs, target[..., None].astype(jnp.int32), axis=-1)[..., 0]
    keep = jnp.ones_like(ignore) if ignore_quirk else ~ignore
    return _masked_clip_mean(nll, keep)


def foreground_bce(foreground_logits: jax.Array, foreground: jax.Array, ignore: jax.Array) -> jax.Array:
    """Binary cross-entropy with logits over non-ignored pixels, per clip then over clips.

    Args:
      foreground_logits: ``[B, T, h, w]``.
      foreground: ``[B, T, h, w]`` bool target (semseg target > 0), or float shares in [0, 1].
      ignore: ``[B, T, h, w]`` bool.
    """
    x = foreground_logits.astype(jnp.promote_types(foreground_logits.dtype, jnp.float32))
    y = foreground.astype(x.dtype)
    # log(1 + exp(x)) - x*y, written to stay finite for large |x|.
    bce = jax.nn.softplus(x) - x * y
    return _masked_clip_mean(bce, ~ignore)
