"""The STEm-Seg embedding losses (seed Sec. I; spec §4.3): Lovász hinge, bandwidth smoothness, seediness.

Instances are padded to a fixed count with a validity mask and handled by array operations (the
Lovász hinge is vmapped), so the loss compiles once per shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from stemseg_jax.losses.lovasz import lovasz_hinge_flat
from stemseg_jax.model.outputs import bandwidths


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, and 0 where denominator == 0 (with finite gradients)."""
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def instance_probabilities(
    embeddings: jax.Array, bandwidths: jax.Array, masks: jax.Array, free_dim_bandwidths: tuple[float, ...]
) -> tuple[jax.Array, jax.Array]:
    """Gaussian membership of every pixel of a clip in every instance (seed Eq. 2, training form).

    Args:
      embeddings: ``[N, E]`` pixel embeddings of one clip (N = T·h·w), coordinate dims first.
      bandwidths: ``[N, V]`` activated bandwidths exp(v)·10 of the V learned (leading) dims.
      masks: ``[I, N]`` float {0, 1} instance masks (empty for invalid slots).
      free_dim_bandwidths: ``E − V`` fixed bandwidths 1/σ² of the free dims.

    Returns:
      ``p [I, N]`` = exp(−½ Σ_d b_{i,d} (e_d − μ_{i,d})²) with μ_i, b_i the means of e and of the
      activated bandwidth over the instance's pixels (not detached), and the pixel counts ``[I]``.
    """
    counts = jnp.sum(masks, axis=1)
    inv_counts = _safe_divide(1.0, counts)[:, None]
    centres = (masks @ embeddings) * inv_counts  # [I, E]
    learned = (masks @ bandwidths) * inv_counts  # [I, V]
    num_instances = masks.shape[0]
    dtype = embeddings.dtype
    fixed = jnp.broadcast_to(jnp.asarray(free_dim_bandwidths, dtype), (num_instances, len(free_dim_bandwidths)))
    instance_bandwidths = jnp.concatenate([learned, fixed], axis=1)  # [I, E]
    # A static loop over the few dims keeps every intermediate at [I, N] (no [I, N, E] tensor).
    sq_distance = jnp.zeros((num_instances, embeddings.shape[0]), dtype)
    for d in range(embeddings.shape[1]):
        sq_distance += instance_bandwidths[:, d, None] * jnp.square(embeddings[None, :, d] - centres[:, d, None])
    return jnp.exp(-0.5 * sq_distance), counts


def clip_embedding_losses(
    embeddings: jax.Array,
    bandwidth_logits: jax.Array,
    seediness: jax.Array,
    masks: jax.Array,
    instance_valid: jax.Array,
    ignore: jax.Array,
    free_dim_bandwidths: tuple[float, ...],
) -> dict[str, jax.Array]:
    """The per-clip normalised embedding terms of one clip.

    Args:
      embeddings: ``[T, h, w, E]`` after the mixing function (coordinates t, y, x first, free dims last).
      bandwidth_logits: ``[T, h, w, V]`` raw v (V learned leading dims).
      seediness: ``[T, h, w]`` after the sigmoid.
      masks: ``[I, T, h, w]`` bool instance masks at output resolution.
      instance_valid: ``[I]`` bool; slots that are invalid or have no pixel are dropped.
      ignore: ``[T, h, w]`` bool.
      free_dim_bandwidths: ``E − V`` fixed bandwidths 1/σ².

    Returns:
      Scalars ``lovasz`` (Σ_i Lovász / n), ``smoothness`` ((1/n) Σ_i mean over S_i and dims of
      (v̄_i − v)²), ``seediness`` ((background MSE + Σ_i instance MSE) / (n + 1)) and
      ``num_instances`` n. All terms are 0 when n = 0, as the official loss skips such clips.
    """
    num_pixels = seediness.size
    # bfloat16 activations are promoted: the loss sums ~1e6 terms. float64 stays float64 (for tests).
    dtype = jnp.promote_types(embeddings.dtype, jnp.float32)
    e = embeddings.reshape(num_pixels, -1).astype(dtype)
    v = bandwidth_logits.reshape(num_pixels, -1).astype(dtype)
    s = seediness.reshape(num_pixels).astype(dtype)
    m_bool = masks.reshape(masks.shape[0], num_pixels)
    m_bool = m_bool & (instance_valid[:, None] & jnp.any(m_bool, axis=1, keepdims=True))
    m = m_bool.astype(dtype)
    valid_f = jnp.any(m_bool, axis=1).astype(dtype)
    n = jnp.sum(valid_f)

    probs, counts = instance_probabilities(e, bandwidths(v, jnp), m, free_dim_bandwidths)
    inv_counts = _safe_divide(1.0, counts)

    per_instance_lovasz = jax.vmap(lovasz_hinge_flat)(2.0 * probs - 1.0, m)
    lovasz = _safe_divide(jnp.sum(per_instance_lovasz * valid_f), n)

    mean_v = (m @ v) * inv_counts[:, None]  # [I, V] raw-space mean
    smooth_sum = jnp.zeros(m.shape, dtype)
    for d in range(v.shape[1]):
        smooth_sum += jnp.square(mean_v[:, d, None] - v[None, :, d])
    per_instance_smooth = jnp.sum(smooth_sum * m, axis=1) * inv_counts / v.shape[1]
    smoothness = _safe_divide(jnp.sum(per_instance_smooth * valid_f), n)

    seed_err = jnp.square(s[None, :] - jax.lax.stop_gradient(probs))
    per_instance_seed = jnp.sum(seed_err * m, axis=1) * inv_counts
    background = ~jnp.any(m_bool, axis=0)
    bg_weight = (background & ~ignore.reshape(num_pixels)).astype(dtype)
    # Ignored background pixels count in the denominator but contribute 0 (spec §4.3).
    bg_seed = _safe_divide(jnp.sum(jnp.square(s) * bg_weight), jnp.sum(background.astype(dtype)))
    seed = jnp.where(n > 0, (bg_seed + jnp.sum(per_instance_seed * valid_f)) / (n + 1.0), 0.0)
    return {"lovasz": lovasz, "smoothness": smoothness, "seediness": seed, "num_instances": n}


def embedding_losses(
    embeddings: jax.Array,
    bandwidth_logits: jax.Array,
    seediness: jax.Array,
    masks: jax.Array,
    instance_valid: jax.Array,
    ignore: jax.Array,
    free_dim_bandwidths: tuple[float, ...],
) -> dict[str, jax.Array]:
    """``clip_embedding_losses`` over a batch (leading axis B on every argument), averaged over clips.

    The mean over clips of per-clip normalised terms equals the official effective loss, whose
    trainer runs one clip per forward pass with gradient accumulation (spec §5.1).
    """
    per_clip = jax.vmap(functools.partial(clip_embedding_losses, free_dim_bandwidths=tuple(free_dim_bandwidths)))(
        embeddings, bandwidth_logits, seediness, masks, instance_valid, ignore
    )
    return {k: jnp.mean(val) for k, val in per_clip.items()}
