"""Optimiser and learning-rate schedule (seed Sec. II; spec §5.1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    """Constant ``learning_rate`` for ``decay_start`` steps, then exponential decay reaching
    ``final_learning_rate`` at ``num_steps``.

    The official scheduler gives optimizer step j (1-based) the rate ``lr0 * gamma**max(0, j - start)``;
    optax counts updates from 0, hence ``count + 1``. With ``schedule="constant"`` the rate never changes.
    """
    lr0 = float(train.learning_rate)
    if train.schedule == "constant":
        return optax.constant_schedule(lr0)
    if train.schedule != "exponential":
        raise ValueError(f"train.schedule must be 'exponential' or 'constant', got {train.schedule!r}")
    decay_steps = int(train.num_steps) - int(train.decay_start)
    if decay_steps <= 0:
        raise ValueError(
            f"train.decay_start ({train.decay_start}) must be smaller than train.num_steps ({train.num_steps})"
        )
    log_gamma = jnp.log(float(train.final_learning_rate) / lr0) / decay_steps
    start = int(train.decay_start)

    def schedule(count):
        j = count + 1
        return lr0 * jnp.exp(log_gamma * jnp.maximum(0, j - start))

    return schedule


def build_optimizer(train: ml_collections.ConfigDict, trainable_mask) -> optax.GradientTransformation:
    """``train.optimizer="sgd"`` (the seed's and the official recipe): SGD with Nesterov momentum and weight
    decay (PyTorch semantics: decay added to the gradient before momentum). ``"adamw"``: Adam with
    decoupled weight decay, for training from scratch (``train.momentum``/``nesterov`` unused). Frozen
    parameters (``trainable_mask`` False) receive zero updates and no decay, and keep no optimizer state."""
    schedule = learning_rate_schedule(train)
    if train.optimizer == "sgd":
        update = optax.chain(
            optax.add_decayed_weights(float(train.weight_decay)),
            optax.sgd(schedule, momentum=float(train.momentum), nesterov=bool(train.nesterov)),
        )
    elif train.optimizer == "adamw":
        update = optax.adamw(schedule, weight_decay=float(train.weight_decay))
    else:
        raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', got {train.optimizer!r}")
    labels = jax.tree_util.tree_map(lambda trainable: "train" if trainable else "frozen", trainable_mask)
    return optax.multi_transform({"train": update, "frozen": optax.set_to_zero()}, labels)


def check_settings(train: ml_collections.ConfigDict) -> None:
    """Fails with the message ``build_optimizer`` would give for a bad schedule or optimizer setting, without
    the model's parameters: ``train`` checks this before it creates anything in the workdir."""
    build_optimizer(train, {})
