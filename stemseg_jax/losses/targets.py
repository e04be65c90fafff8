"""Loss targets at the network's output resolution (spec §4.1, §10 item 10)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp


def downsample_masks(masks: jax.Array, factor: int = 4) -> jax.Array:
    """The official 1/factor mask rule: bilinear (half-pixel, no antialias) then truncation to uint8.

    Bilinear sampling at scale 1/f with half-pixel centres reads output pixel i at input coordinate
    f·i + (f − 1)/2, i.e. the average of rows ⌊·⌋ and ⌈·⌉ (the same row for odd f), and likewise for
    columns. Truncating that average of {0, 1} values gives 1 only when every sampled pixel is 1, so
    the rule is an AND of (up to) 2×2 pixels (rows/cols {4i+1, 4i+2} for f = 4), computed here exactly
    without floating point.

    Args:
      masks: ``[..., H, W]`` bool (or {0, 1}); H and W divisible by ``factor``.
      factor: integer downsampling factor.

    Returns:
      ``[..., H/factor, W/factor]`` bool.
    """
    height, width = masks.shape[-2:]
    if factor < 1 or height % factor or width % factor:
        raise ValueError(f"downsample_masks: mask size {height}x{width} is not divisible by factor {factor}")
    m = jnp.asarray(masks).astype(bool)
    lo, hi = (factor - 1) // 2, factor // 2
    rows = m[..., lo::factor, :] & m[..., hi::factor, :]
    return rows[..., lo::factor] & rows[..., hi::factor]


TARGET_RULES = ("official", "area")


def block_fractions(masks: jax.Array, factor: int = 4) -> jax.Array:
    """``[..., H, W]`` bool -> ``[..., H/factor, W/factor]`` float32: the share of each block that is set."""
    height, width = masks.shape[-2:]
    if factor < 1 or height % factor or width % factor:
        raise ValueError(f"block_fractions: mask size {height}x{width} is not divisible by factor {factor}")
    blocks = jnp.asarray(masks).reshape(masks.shape[:-2] + (height // factor, factor, width // factor, factor))
    return jnp.mean(blocks.astype(jnp.float32), axis=(-3, -1))


def prepare_targets(
    batch: Mapping[str, jax.Array], output_hw: tuple[int, int], rule: str = "official", num_classes: int = 0
) -> dict[str, jax.Array]:
    """Full-resolution batch -> loss targets at the output resolution (jit-compatible).

    Args:
      batch: ``masks [B, I, T, H, W]`` bool, ``instance_valid [B, I]`` bool, ``category_ids [B, I]``
        int, ``ignore [B, T, H, W]`` bool, as the data pipeline yields them (other keys are ignored).
      output_hw: ``(h, w)`` of the network output; H = f·h and W = f·w for one integer f.
      rule: ``"official"``: every mask by ``downsample_masks`` (an AND of the block's central 2×2
        pixels, which shrinks each object by about one input pixel per side). ``"area"``: an
        instance mask keeps a pixel when at least half of its f×f block is set (no shrinking), and
        the semantic targets are soft: each class's share of the block (``class_fractions``). Ignore
        masks follow the official rule either way.
      num_classes: C, needed by ``rule="area"`` for ``class_fractions``.

    Returns:
      ``masks [B, I, T, h, w]`` bool (zero in invalid slots), ``instance_valid [B, I]`` (slots with
      no pixel left at output resolution become invalid), ``category_ids [B, I]`` int32 and
      ``ignore [B, T, h, w]`` bool; with ``rule="area"`` also ``class_fractions [B, T, h, w, C]``
      float32 (the full-resolution semantic target of ``semseg_target``, block by block; sums to 1).
    """
    if rule not in TARGET_RULES:
        raise ValueError(f"prepare_targets: rule must be one of {TARGET_RULES}, got {rule!r}")
    if rule == "area" and num_classes < 1:
        raise ValueError("prepare_targets: rule='area' needs num_classes (the soft semantic targets' C)")
    for key in ("masks", "instance_valid", "category_ids", "ignore"):
        if key not in batch:
            raise KeyError(f"prepare_targets: batch has no field {key!r} (has {sorted(batch)})")
    masks = batch["masks"]
    if masks.ndim != 5:
        raise ValueError(f"prepare_targets: field 'masks' must be [B, I, T, H, W], got shape {masks.shape}")
    height, width = masks.shape[-2:]
    h, w = output_hw
    factor = height // h if h else 0
    if factor < 1 or height != factor * h or width != factor * w:
        raise ValueError(
            f"prepare_targets: field 'masks' has size {height}x{width}, not an integer multiple of the output {h}x{w}"
        )
    if batch["ignore"].shape[-2:] != (height, width):
        raise ValueError(
            f"prepare_targets: field 'ignore' has size {tuple(batch['ignore'].shape[-2:])}, masks {height}x{width}"
        )
    instance_valid = jnp.asarray(batch["instance_valid"], bool)
    category_ids = jnp.asarray(batch["category_ids"]).astype(jnp.int32)
    if rule == "official":
        small = downsample_masks(masks, factor)
    else:
        small = block_fractions(masks, factor) >= 0.5
    small = small & instance_valid[:, :, None, None, None]
    targets = {
        "masks": small,
        "instance_valid": jnp.any(small, axis=(2, 3, 4)),
        "category_ids": category_ids,
        "ignore": downsample_masks(batch["ignore"], factor),
    }
    if rule == "area":
        keep = jnp.asarray(masks, bool) & instance_valid[:, :, None, None, None]
        # The full-resolution semantic label (overlaps to the higher id, as ``semseg_target``), then each
        # class's share per block: one small reduction per class instead of a [B, T, H, W, C] one-hot.
        labels = jnp.max(jnp.where(keep, category_ids[:, :, None, None, None], 0), axis=1, initial=0)
        targets["class_fractions"] = jnp.stack(
            [block_fractions(labels == c, factor) for c in range(num_classes)], axis=-1
        )
    return targets
