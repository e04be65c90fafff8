"""A small generic training loop for the networks besides STEm-Seg (the re-id network, Mask R-CNN).

One device, one jitted step over a train state ``{step, params, opt_state, constants}`` (the layout of
``train.trainer``, so its checkpoint helpers apply), orbax checkpoints under ``workdir/checkpoints`` with
resumption from the newest intact one, a progress bar and TensorBoard scalars.
Batches come from ``batches(step)``, a function of the step, so a resumed run sees the batches the
uninterrupted run would have seen and ends with bit-identical parameters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from flax import traverse_util

from stemseg_jax.checkpoints import check_writable_dir, first_line, restore_model_variables
from stemseg_jax.train.trainer import (
    CheckpointSaveError,
    _check_finite,
    _check_free_space,
    _check_save,
    _committed_steps,
    _restore_newest_intact,
)

log = logging.getLogger(__name__)

LossFn = Callable[[dict, dict, dict, jax.Array], tuple[jax.Array, dict]]


def with_frozen(optimizer: optax.GradientTransformation, params: dict,
                trainable: Callable[[tuple[str, ...]], bool] | None) -> optax.GradientTransformation:
    """``optimizer`` for the parameters whose path (a tuple of names) ``trainable`` accepts; the others get
    zero updates and no optimizer state. ``params`` may be abstract (only the tree's names are read)."""
    if trainable is None:
        return optimizer
    flat = traverse_util.flatten_dict(params)
    labels = traverse_util.unflatten_dict({k: "train" if trainable(k) else "frozen" for k in flat})
    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


def make_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, seed: int):
    """``step(state, batch) -> (state, metrics)``, jitted with the state donated. The step's PRNG key is
    ``fold_in(PRNGKey(seed), step)``: a function of the step alone, like the batch."""

    def step(state, batch):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["constants"], batch, key)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return jax.jit(step, donate_argnums=(0,))


def run_training(
    *,
    workdir: str,
    name: str,
    init_variables: dict,
    loss_fn: LossFn,
    batches: Callable[[int], dict],
    optimizer: optax.GradientTransformation,
    num_steps: int,
    seed: int,
    checkpoint_every: int,
    log_every: int,
    keep: int = 3,
    trainable: Callable[[tuple[str, ...]], bool] | None = None,
    schedule: optax.Schedule | None = None,
    progress: bool = True,
) -> dict:
    """Trains ``init_variables["params"]`` for ``num_steps`` steps in ``workdir``, resuming from the newest
    intact checkpoint in ``workdir/checkpoints``. Returns the final variables ``{"params", <constants>...}``
    (NumPy).

    Args:
      name: the progress bar's label.
      init_variables: ``{"params": ..., <other collections>}``; the other collections (FrozenBN buffers)
        are passed to ``loss_fn`` as ``rest`` and never change.
      loss_fn: ``(params, rest, batch, key) -> (loss, metrics)``, pure and jit-able; ``metrics`` scalars.
      batches: ``step -> batch`` (a dict of arrays, the same shapes every step) for steps ``0..num_steps-1``.
      optimizer: over all parameters; ``trainable(path)`` False freezes a parameter (zero updates).
      seed: the steps' PRNG keys (``make_step``).
      checkpoint_every, keep: checkpoint cadence (the last step is always saved) and how many to keep.
      log_every: scalar logging cadence; a non-finite loss stops training at the latest here, naming its step.
      schedule: the learning-rate schedule, only to log the rate.
    """
    for field, value in (("num_steps", num_steps), ("checkpoint_every", checkpoint_every),
                         ("log_every", log_every), ("keep", keep)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"run_training({name}): {field} must be an integer >= 1, got {value!r}")
    if "params" not in init_variables:
        raise ValueError(f"run_training({name}): init_variables has no 'params' (keys {sorted(init_variables)})")
    workdir = check_writable_dir(workdir, "--workdir")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    params = init_variables["params"]
    tx = with_frozen(optimizer, params, trainable)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "constants": {k: v for k, v in init_variables.items() if k != "params"},
    }
    _check_free_space(workdir, state)
    start = 0
    steps = _committed_steps(ckpt_dir)
    if steps:
        state, start = _restore_newest_intact(ckpt_dir, state, steps, workdir)
        log.info("%s: resumed from %s at step %d", name, ckpt_dir, start)
    # Copies: the step donates its input, which must not invalidate the caller's init_variables.
    state = jax.tree_util.tree_map(jnp.array, state)
    if start >= num_steps:
        return _variables(state)
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=checkpoint_every, create=True, cleanup_tmp_directories=True))
    train_step = make_step(loss_fn, tx, seed)
    logger = _Logger(workdir, name, start=start, total=num_steps, progress=progress)
    pending: list[tuple[int, dict, list[str]]] = []
    saving_step: int | None = None
    step = start
    t_logged = time.perf_counter()
    failed = True
    try:
        while step < num_steps:
            batch = batches(step)
            state, metrics = train_step(state, batch)
            step += 1
            saving_step = _check_save(manager, saving_step, block=False)
            if schedule is not None:
                metrics = {**metrics, "lr": schedule(step - 1)}
            pending.append((step, metrics, []))
            # Our own cadence, not manager.should_save: orbax's default policy also saves the first step of a run.
            saving = step % checkpoint_every == 0 or step == num_steps
            if step % log_every == 0 or step == start + 1 or saving:
                # Checked before any save, so a non-finite state is never written.
                host = _check_finite(jax.device_get(pending))
                logger.log_step(step, host, (time.perf_counter() - t_logged) / len(pending), steps=len(pending))
                pending, t_logged = [], time.perf_counter()
            if saving:
                saving_step = _check_save(manager, saving_step, block=True)
                try:
                    saved = manager.save(step, args=ocp.args.StandardSave(state), force=True)
                except Exception as e:
                    raise CheckpointSaveError(
                        f"{name} checkpoint step {step}: saving to {ckpt_dir} failed: {first_line(e)}") from e
                if saved:
                    saving_step = step
        failed = False
    finally:
        try:
            if failed:
                with contextlib.suppress(Exception):
                    manager.wait_until_finished()
            else:
                _check_save(manager, saving_step, block=True)
        finally:
            logger.close()
            manager.close()
    return _variables(state)


class _Logger:
    """A tqdm bar (with ``progress``) and TensorBoard scalars ``<name>/<metric>`` in ``workdir/tensorboard``
    (always: a run without a terminal still leaves its curves). ``train.progress.TrainLogger`` ties both to
    one switch and to STEm-Seg's image summaries, hence this small one."""

    def __init__(self, workdir: str, name: str, *, start: int, total: int, progress: bool):
        self.name = name
        self._bar = tqdm.tqdm(total=total, initial=start, dynamic_ncols=True, desc=name, unit="step") if progress \
            else None
        try:
            from tensorboardX import SummaryWriter  # noqa: PLC0415 (optional dependency)

            self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:
            self._writer = None

    def log_step(self, step: int, metrics: dict, seconds_per_step: float, steps: int) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            shown = {k: f"{float(v):.4g}" for k, v in metrics.items() if k != "grad_norm"}
            self._bar.set_postfix({**shown, "s/step": f"{seconds_per_step:.2f}"}, refresh=False)
        if self._writer is not None:
            for k, v in metrics.items():
                self._writer.add_scalar(f"{self.name}/{k}", float(v), step)
            self._writer.add_scalar(f"{self.name}/seconds_per_step", float(seconds_per_step), step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()


def _variables(state: dict) -> dict:
    host = jax.device_get(state)
    return {"params": host["params"], **host["constants"]}


def newest_step_dir(checkpoint_dir: str) -> str:
    """The newest committed step directory of a CheckpointManager directory (``.../checkpoints``)."""
    steps = _committed_steps(checkpoint_dir)
    if not steps:
        raise FileNotFoundError(f"{checkpoint_dir}: no checkpoint steps in it")
    return os.path.join(checkpoint_dir, str(steps[-1]))


def restore_variables(checkpoint_dir_or_step_dir: str) -> dict:
    """The model variables ``{"params", <constants>...}`` (NumPy) of a checkpoint that ``run_training`` wrote:
    a step directory (``.../checkpoints/<step>``), or the ``checkpoints`` directory (its newest step), or
    the workdir holding it."""
    path = os.path.abspath(os.path.expandvars(os.path.expanduser(checkpoint_dir_or_step_dir)))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path} is not a directory")
    if os.path.isdir(os.path.join(path, "checkpoints")) and not os.path.isdir(os.path.join(path, "default")):
        path = os.path.join(path, "checkpoints")
    if not os.path.isdir(os.path.join(path, "default")) and _committed_steps(path):
        path = newest_step_dir(path)
    variables = restore_model_variables(path, "checkpoint")
    return jax.tree_util.tree_map(np.asarray, variables)
