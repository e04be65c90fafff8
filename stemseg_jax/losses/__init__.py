"""STEm-Seg training losses (seed Sec. I; spec §4).

``stemseg_loss`` is pure and jit-compatible; the config is read at trace time, so callers close over
it (``jax.jit(lambda o, t: stemseg_loss(o, t, config))``).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections

from stemseg_jax.config import embedding_dims
from stemseg_jax.losses.embedding import clip_embedding_losses, embedding_losses
from stemseg_jax.losses.lovasz import lovasz_hinge_flat
from stemseg_jax.losses.semantic import foreground_bce, semseg_cross_entropy, semseg_target
from stemseg_jax.losses.targets import TARGET_RULES, block_fractions, downsample_masks, prepare_targets

__all__ = [
    "TARGET_RULES",
    "block_fractions",
    "clip_embedding_losses",
    "downsample_masks",
    "embedding_losses",
    "foreground_bce",
    "lovasz_hinge_flat",
    "prepare_targets",
    "semseg_cross_entropy",
    "semseg_target",
    "stemseg_loss",
]

_TARGET_FIELDS = ("masks", "instance_valid", "ignore", "category_ids")


def _check_shapes(outputs: Mapping[str, jax.Array], targets: Mapping[str, jax.Array], e_dims: int, v_dims: int):
    for key in ("embeddings", "bandwidth_logits", "seediness"):
        if key not in outputs:
            raise KeyError(f"stemseg_loss: outputs have no field {key!r} (have {sorted(outputs)})")
    for key in _TARGET_FIELDS:
        if key not in targets:
            raise KeyError(f"stemseg_loss: targets have no field {key!r} (have {sorted(targets)})")
    bthw = outputs["seediness"].shape
    if len(bthw) != 4:
        raise ValueError(f"stemseg_loss: outputs 'seediness' must be [B, T, h, w], got {bthw}")
    expected = {
        ("outputs", "embeddings"): (outputs["embeddings"].shape, bthw + (e_dims,)),
        ("outputs", "bandwidth_logits"): (outputs["bandwidth_logits"].shape, bthw + (v_dims,)),
        ("targets", "ignore"): (targets["ignore"].shape, bthw),
    }
    masks = targets["masks"].shape
    if len(masks) != 5 or masks[:1] + masks[2:] != bthw:
        raise ValueError(
            f"stemseg_loss: targets 'masks' must be [B, I, T, h, w] with (B, T, h, w) = {bthw}, got {masks}"
        )
    expected[("targets", "instance_valid")] = (targets["instance_valid"].shape, masks[:2])
    expected[("targets", "category_ids")] = (targets["category_ids"].shape, masks[:2])
    for (where, key), (got, want) in expected.items():
        if tuple(got) != tuple(want):
            raise ValueError(f"stemseg_loss: {where} {key!r} has shape {tuple(got)}, expected {tuple(want)}")


def _with_foreground(model_config: ml_collections.ConfigDict) -> bool:
    return bool(model_config.get("foreground_channel", True))


def _check_semseg_shape(logits: jax.Array | None, masks_shape: tuple[int, ...], model_config):
    if logits is None:
        raise ValueError("stemseg_loss: config.model.use_semseg_head is set but outputs 'semseg_logits' is None")
    with_fg = _with_foreground(model_config)
    channels = model_config.num_classes + (1 if with_fg else 0)
    if tuple(logits.shape) != tuple(masks_shape[:1]) + tuple(masks_shape[2:]) + (channels,):
        raise ValueError(
            f"stemseg_loss: outputs 'semseg_logits' has shape {tuple(logits.shape)}, expected [B, T, h, w, {channels}]"
            f" (num_classes {model_config.num_classes}, foreground_channel {with_fg})"
        )


def stemseg_loss(
    outputs: Mapping[str, jax.Array | None], targets: Mapping[str, jax.Array], config: ml_collections.ConfigDict
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The full STEm-Seg training loss.

    Args:
      outputs: the model's dict: ``embeddings [B, T, h, w, E]`` (after the mixing function),
        ``bandwidth_logits [B, T, h, w, V]`` (raw v), ``seediness [B, T, h, w]`` (after sigmoid),
        ``semseg_logits [B, T, h, w, C (+1)]`` or None (last channel the foreground logit when
        ``config.model.foreground_channel``).
      targets: ``masks [B, I, T, h, w]`` bool at output resolution, ``instance_valid [B, I]`` bool,
        ``ignore [B, T, h, w]`` bool, ``category_ids [B, I]`` int (see ``prepare_targets``); with
        ``class_fractions [B, T, h, w, C]`` (``prepare_targets(rule="area")``) the semantic and
        foreground terms take those soft targets instead of the hard labels of ``masks``.
      config: reads ``model.{embedding_mode, free_dim_stds, use_semseg_head, num_classes,
        foreground_channel}`` and ``loss.*``.

    Returns:
      ``(total, terms)``; ``terms`` holds the scalars ``lovasz``, ``smoothness``, ``seediness``,
      ``embedding`` (weight·(w_lovasz·lovasz + w_smoothness·smoothness + w_seediness·seediness)),
      ``semseg``, ``foreground`` and ``total`` = embedding + w_semseg·semseg + w_foreground·foreground.

    Normalisation: every term is computed per clip with the official per-forward normalisation
    (Lovász / #instances, seediness / (#instances + 1), smoothness averaged over instances; semseg
    and foreground means over pixels) and then averaged over the B clips. This equals the official
    effective loss, whose trainer runs one clip per forward pass with gradient accumulation (spec
    §5.1), rather than its single-forward batch formula (sums over clips / total instances). Instance
    slots that are invalid or have no pixel at output resolution are dropped; a clip without
    instances contributes 0 to the embedding terms (as the official loss skips it) but still counts
    in the mean over clips.
    """
    m_cfg, l_cfg = config.model, config.loss
    e_dims, v_dims, n_free = embedding_dims(m_cfg.embedding_mode)
    stds = tuple(m_cfg.free_dim_stds)
    if len(stds) != n_free:
        raise ValueError(
            f"config.model.free_dim_stds has {len(stds)} entries; embedding_mode {m_cfg.embedding_mode!r}"
            f" has {n_free} free dims"
        )
    _check_shapes(outputs, targets, e_dims, v_dims)
    if m_cfg.use_semseg_head:
        _check_semseg_shape(outputs.get("semseg_logits"), targets["masks"].shape, m_cfg)
    masks = targets["masks"].astype(bool)
    valid = targets["instance_valid"].astype(bool)
    ignore = targets["ignore"].astype(bool)

    emb = embedding_losses(
        outputs["embeddings"],
        outputs["bandwidth_logits"],
        outputs["seediness"],
        masks,
        valid,
        ignore,
        tuple(1.0 / (s * s) for s in stds),
    )
    embedding = l_cfg.weight * (
        l_cfg.w_lovasz * emb["lovasz"] + l_cfg.w_smoothness * emb["smoothness"] + l_cfg.w_seediness * emb["seediness"]
    )

    zero = jnp.zeros((), emb["lovasz"].dtype)
    semseg, foreground = zero, zero
    if m_cfg.use_semseg_head:
        logits = outputs["semseg_logits"]
        if "class_fractions" in targets:  # soft targets (prepare_targets(rule="area"))
            target = targets["class_fractions"]
            if target.shape[-1] != m_cfg.num_classes:
                raise ValueError(
                    f"stemseg_loss: targets 'class_fractions' has {target.shape[-1]} classes, "
                    f"config.model.num_classes is {m_cfg.num_classes}"
                )
            is_foreground = 1.0 - target[..., 0]
        else:
            target = semseg_target(masks, valid, targets["category_ids"])
            is_foreground = target > 0
        semseg = semseg_cross_entropy(
            logits[..., : m_cfg.num_classes], target, ignore, ignore_quirk=bool(l_cfg.semseg_ce_ignore_quirk)
        )
        if _with_foreground(m_cfg):
            foreground = foreground_bce(logits[..., -1], is_foreground, ignore)

    total = embedding + l_cfg.w_semseg * semseg + l_cfg.w_foreground * foreground
    terms = {
        "lovasz": emb["lovasz"],
        "smoothness": emb["smoothness"],
        "seediness": emb["seediness"],
        "embedding": embedding,
        "semseg": semseg,
        "foreground": foreground,
        "total": total,
    }
    return total, terms
