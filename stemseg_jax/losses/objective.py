"""The training objective: the network on a batch, its targets at the output stride, the STEm-Seg loss."""

from __future__ import annotations

import ml_collections

from stemseg_jax.losses import TARGET_RULES, prepare_targets, stemseg_loss


def make_loss_fn(config: ml_collections.ConfigDict, model):
    """``loss_fn(params, constants, batch) -> (total, terms)`` for ``model`` (``model.build_model(config)``).

    ``constants`` are the non-trained collections (``frozen_bn``, ``buffers``); ``batch`` holds
    ``images [B, T, H, W, 3]`` uint8 and the full-resolution targets of ``data.build_train_iterator``.
    Shared by training, the smoke mode, the benchmarks and the tests.
    """
    if config.loss.target_rule not in TARGET_RULES:
        raise ValueError(f"config.loss.target_rule must be one of {TARGET_RULES}, got {config.loss.target_rule!r}")

    def loss_fn(params, constants, batch):
        outputs = model.apply({"params": params, **constants}, batch["images"])
        targets = prepare_targets(
            batch, outputs["embeddings"].shape[2:4], config.loss.target_rule, config.model.num_classes
        )
        return stemseg_loss(outputs, targets, config)

    return loss_fn
