"""The training loop: data-parallel SGD over a device mesh, orbax checkpoints, logging (spec §5.1).

Batching follows the official trainer: ``train.batch_size`` clips per optimizer step (2), processed
one clip per device; with fewer devices than clips the step accumulates gradients over
``batch_size / num_devices`` micro-batches. The loss of a micro-batch is the mean of its clips'
individually normalised losses, so the update is the same however the clips are spread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from stemseg_jax.checkpoints import (
    check_fits,
    check_writable_dir,
    first_line,
    flat_shapes,
    restore_model_variables,
    saved_shapes,
)
from stemseg_jax.config import check_values
from stemseg_jax.losses.objective import make_loss_fn
from stemseg_jax.model import build_model, trainable_mask
from stemseg_jax.train.optim import build_optimizer, check_settings, learning_rate_schedule
from stemseg_jax.train.summaries import drop_events_after

log = logging.getLogger(__name__)

BATCH_KEYS = ("images", "masks", "instance_valid", "category_ids", "ignore")


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (e.g. a full disk): training stops at the step it is noticed."""


def initialize_distributed() -> None:
    """``jax.distributed.initialize`` for ``train.distributed``: one process per host, all of them running
    the same command. SLURM, Open MPI and Cloud TPU are detected by jax; a plain launcher sets
    ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``STEMSEG_NUM_PROCESSES`` and ``STEMSEG_PROCESS_ID``.
    Already initialised (by the caller) is fine."""
    if jax.distributed.is_initialized():
        return
    from jax._src import xla_bridge  # no public API tells whether the backend has started

    if xla_bridge.backends_are_initialized():
        raise ValueError("train.distributed=True: jax.distributed must be initialised before any JAX computation; "
                         "call stemseg_jax.train.trainer.initialize_distributed() first")
    kwargs = {}
    for key, var in (("num_processes", "STEMSEG_NUM_PROCESSES"), ("process_id", "STEMSEG_PROCESS_ID")):
        if os.environ.get(var):
            try:
                kwargs[key] = int(os.environ[var])
            except ValueError:
                raise ValueError(f"environment variable {var}={os.environ[var]!r} must be an integer") from None
    jax.distributed.initialize(**kwargs)


def make_mesh(devices=None) -> Mesh:
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), ("data",))


def make_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
    """The optimizer of ``config.train`` over ``params`` (real or abstract arrays: only the tree's names are
    read, to freeze what ``model.trainable_mask`` freezes)."""
    return build_optimizer(config.train, trainable_mask(params, config))


def init_state(config: ml_collections.ConfigDict, images: np.ndarray, key: jax.Array, *, model=None,
               optimizer: optax.GradientTransformation | None = None) -> dict:
    """Creates the train state ``{step, params, opt_state, constants}`` for clips shaped like ``images``.

    ``constants`` holds the non-trained collections (``frozen_bn``, ``buffers``). Without an
    initial checkpoint the frozen BatchNorm statistics are calibrated on ``images`` (see
    ``FrozenBatchNorm``); with ``train.init_checkpoint`` the variables found there replace the fresh ones.
    ``model`` and ``optimizer`` default to the ones ``config`` describes.
    """
    images = jnp.asarray(images[:1])
    model = model or build_model(config)
    variables = jax.jit(model.init)(key, images)
    if config.train.init_checkpoint:
        variables = _merge_init_checkpoint(
            variables, config.train.init_checkpoint, config.train.init_backbone_only, config.inference.use_ema
        )
    else:
        calibrating = build_model(config, calibrate_bn=True)
        _, updated = jax.jit(lambda v, x: calibrating.apply(v, x, mutable=["frozen_bn"]))(variables, images)
        variables = {**variables, **updated}
    params = variables["params"]
    optimizer = optimizer or make_optimizer(config, params)
    constants = {k: v for k, v in variables.items() if k != "params"}
    step = jnp.zeros((), jnp.int32)
    state = {"step": step, "params": params, "opt_state": optimizer.init(params), "constants": constants}
    if float(config.train.ema_decay) > 0.0:
        state["ema_params"] = jax.tree_util.tree_map(jnp.copy, params)
    return state


def _merge_init_checkpoint(variables: dict, path: str, backbone_only: bool, use_ema: bool) -> dict:
    """Overwrites ``variables`` with the tensors stored at ``path`` (an orbax checkpoint of variables or
    of a train state). Shapes must agree; names present on only one side are reported."""
    # From a stage-1 train state: the parameters its evaluation used (the moving average when it keeps one,
    # unless inference.use_ema is False).
    restored = restore_model_variables(path, "train.init_checkpoint", use_ema)
    ours = traverse_util.flatten_dict(variables)
    theirs = traverse_util.flatten_dict(restored)
    if backbone_only:
        theirs = {k: v for k, v in theirs.items() if len(k) > 1 and k[1] == "backbone"}
    missing = [k for k in theirs if k not in ours]
    if missing:
        raise ValueError(f"{path}: tensors not in the model: {['/'.join(k) for k in missing[:10]]}")
    for k, v in theirs.items():
        if tuple(ours[k].shape) != tuple(np.shape(v)):
            raise ValueError(f"{path}: {'/'.join(k)} has shape {np.shape(v)}, the model expects {ours[k].shape}")
        ours[k] = jnp.asarray(v, ours[k].dtype)
    log.info("initialised %d of %d tensors from %s", len(theirs), len(ours), path)
    return traverse_util.unflatten_dict(ours)


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh, *, model=None,
                    optimizer: optax.GradientTransformation | None = None):
    """Returns ``step(state, batch) -> (state, metrics)``, jit-compiled over ``mesh``.

    ``batch`` arrays are ``[A, D, ...]``: A accumulation micro-batches of D clips, one per device.
    ``model`` defaults to ``build_model(config)``, ``optimizer`` to ``make_optimizer`` over the state's
    parameters (built once, when the step is traced); ``train`` passes the ones it built.
    """
    schedule = learning_rate_schedule(config.train)
    loss_fn = make_loss_fn(config, model or build_model(config))

    def step(state, batch):
        tx = optimizer or make_optimizer(config, state["params"])
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        # An unrolled loop, not lax.scan: XLA:CPU runs the convolutions inside a while loop ~10x slower,
        # and the accumulation count (batch_size / devices) is small.
        n = batch["images"].shape[0]
        grads, terms = None, None
        for a in range(n):
            micro = jax.tree_util.tree_map(lambda x, a=a: x[a], batch)
            (total, micro_terms), micro_grads = grad_fn(state["params"], state["constants"], micro)
            micro_terms = {**micro_terms, "loss": total}
            if grads is None:
                grads, terms = micro_grads, micro_terms
            else:
                grads = jax.tree_util.tree_map(jnp.add, grads, micro_grads)
                terms = jax.tree_util.tree_map(jnp.add, terms, micro_terms)
        grads = jax.tree_util.tree_map(lambda g: g / n, grads)
        terms = {k: v / n for k, v in terms.items()}
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {**terms, "lr": schedule(state["step"]), "grad_norm": optax.global_norm(grads)}
        new_state = {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}
        if "ema_params" in state:
            new_state["ema_params"] = update_ema(state["ema_params"], params, state["step"], config.train.ema_decay)
        return new_state, metrics

    # No out_shardings: the state comes in replicated and stays so by propagation. Pinning them explicitly
    # made XLA:CPU ~50x slower here (measured: 7.1 s against 0.14 s per tiny step).
    return jax.jit(step, donate_argnums=(0,))


def update_ema(ema_params, params, step, max_decay: float):
    """One step of the parameters' moving average. The decay ramps up as ``(1 + step) / (10 + step)``
    to ``max_decay``, so that the average of a short run is not dominated by the initialisation."""
    step = jnp.asarray(step, jnp.float32)
    decay = jnp.minimum(jnp.float32(max_decay), (1.0 + step) / (10.0 + step))
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Host batch ``[B, ...]`` (this process's clips) -> global arrays ``[A, D, ...]`` sharded over D."""
    n_dev = mesh.devices.size
    sharding = NamedSharding(mesh, P(None, "data"))
    out = {}
    for k in BATCH_KEYS:
        x = np.asarray(batch[k])
        local_dev = len(mesh.local_devices)
        if x.shape[0] % local_dev:
            raise ValueError(f"batch of {x.shape[0]} clips cannot be split over {local_dev} local devices")
        x = x.reshape((x.shape[0] // local_dev, local_dev) + x.shape[1:])
        global_shape = (x.shape[0], n_dev) + x.shape[2:]
        out[k] = jax.make_array_from_process_local_data(sharding, x, global_shape)
    return out


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(config.train.keep_checkpoints),
        save_interval_steps=int(config.train.checkpoint_every),
        create=True,
        # A save that failed (e.g. on a full disk) leaves a tmp directory that would break saving that step again.
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    batches: Iterator[dict] | None = None,
    stop_after: int | None = None,
    devices=None,
    progress: bool = True,
    progress_desc: str = "train",
) -> dict:
    """Trains ``config`` in ``workdir``, resuming from the newest checkpoint found there.

    Args:
      batches: an iterator of host batches starting at the resume step; by default
        ``stemseg_jax.data.build_train_iterator`` (closed at the end, which stops its worker processes).
      stop_after: end this run after this many optimizer steps (the run can be resumed later).
      progress_desc: the progress bar's label (e.g. which run of an ablation).
    Returns the final train state (on the host).
    """
    from stemseg_jax.data.pipeline import build_train_iterator
    from stemseg_jax.train.progress import TrainLogger

    # Everything a setting can get wrong is checked before anything is created in the workdir, so a failed
    # start leaves no empty checkpoints/ that later commands would take for a run.
    if config.train.distributed:  # first: the checks below already start jax's backend
        initialize_distributed()
    check_values(config)
    check_settings(config.train)
    mesh = make_mesh(devices)
    n_dev = mesh.devices.size
    if config.train.batch_size % n_dev:
        raise ValueError(f"train.batch_size={config.train.batch_size} is not a multiple of the {n_dev} devices")
    workdir = check_writable_dir(workdir, "--workdir")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    steps = _committed_steps(ckpt_dir)
    start = steps[-1] if steps else 0
    num_steps = int(config.train.num_steps)
    own_batches = batches is None

    def data_from(step: int):
        return build_train_iterator(
            config, seed=int(config.seed), start_step=step,
            shard_index=jax.process_index(), shard_count=jax.process_count(),
        )

    if own_batches:
        batches = data_from(start)
    first = next(batches)
    # One model and one optimizer for initialisation, the step and the summaries; the optimizer's frozen
    # parameters are known from the parameter tree's names alone, so abstract shapes suffice.
    model = build_model(config)
    key = jax.random.PRNGKey(int(config.seed))
    abstract_params = jax.eval_shape(model.init, key, jnp.asarray(first["images"][:1]))["params"]
    optimizer = make_optimizer(config, abstract_params)
    state = init_state(config, first["images"], key, model=model, optimizer=optimizer)
    _check_free_space(workdir, state)
    if steps:
        state, restored = _restore_newest_intact(ckpt_dir, state, steps, workdir)
        if restored != start:
            # The data continue at the step resumed from: the pipeline is rebuilt there.
            if own_batches:
                if hasattr(batches, "close"):
                    batches.close()
                batches = data_from(restored)
                first = next(batches)
            else:
                log.warning("the given batches were meant to start at step %d, training resumes at step %d",
                            start, restored)
            start = restored
        log.info("resumed from %s at step %d", ckpt_dir, start)
    manager = checkpoint_manager(workdir, config)
    replicated = NamedSharding(mesh, P())
    if jax.process_count() > 1:
        # Every process calibrated the frozen BatchNorm statistics on its own first clip; process 0's is the
        # global batch's first clip, which a single process would have used.
        from jax.experimental import multihost_utils

        state = multihost_utils.broadcast_one_to_all(state)
    state = jax.device_put(state, replicated)
    train_step = make_train_step(config, mesh, model=model, optimizer=optimizer)
    end = num_steps if stop_after is None else min(num_steps, start + stop_after)
    if jax.process_index() == 0:
        # A killed run logged steps past its last checkpoint (and may have torn its last record): they are
        # logged again from here on, so its event files keep only what this run will not rewrite.
        dropped = drop_events_after(os.path.join(workdir, "tensorboard"), start)
        if dropped:
            log.info("dropped %d TensorBoard event(s) past step %d, logged by an interrupted run", dropped, start)
    logger = TrainLogger(config, workdir, start=start, total=num_steps, enabled=progress and jax.process_index() == 0,
                         model=model, desc=progress_desc)
    log_every = max(1, int(config.train.log_every))
    summary_every = int(config.train.image_summary_every or 0)
    batch = first
    step = start
    # Metrics stay on the device between logging steps, so the host never waits for a step it does not log
    # and prepares the next batch while the device computes. They are checked (finite loss) before any
    # checkpoint is written, so a non-finite state is never saved.
    pending: list[tuple[int, dict, list[str]]] = []
    # The step whose checkpoint orbax is still writing in the background; its errors are checked every step.
    saving_step: int | None = None
    t_logged = time.perf_counter()
    failed = True
    try:
        while step < end:
            state, metrics = train_step(state, shard_batch(batch, mesh))
            step += 1
            saving_step = _check_save(manager, saving_step, block=False, on_done=logger.flush)
            pending.append((step, metrics, [str(c) for c in np.asarray(batch.get("clip_ids", []))]))
            saving = manager.should_save(step) or step == end
            if step % log_every == 0 or step == start + 1 or saving or (summary_every and step % summary_every == 0):
                host = _check_finite(jax.device_get(pending))
                seconds = (time.perf_counter() - t_logged) / len(pending)
                logger.log_step(step, host, seconds, steps=len(pending))
                pending, t_logged = [], time.perf_counter()
            if summary_every and step % summary_every == 0:
                logger.log_images(step, state, batch)
            if saving:
                saving_step = _check_save(manager, saving_step, block=True, on_done=logger.flush)
                try:
                    saved = manager.save(step, args=ocp.args.StandardSave(state), force=step == end)
                except Exception as e:
                    raise CheckpointSaveError(
                        f"checkpoint step {step}: saving to {manager.directory} failed: {first_line(e)}") from e
                if saved:
                    saving_step = step
            if step < end:
                batch = next(batches)
        failed = False
    finally:
        try:
            if failed:
                # The error already propagating is the one to report; a pending save only has to finish.
                with contextlib.suppress(Exception):
                    manager.wait_until_finished()
            else:
                _check_save(manager, saving_step, block=True)
        finally:
            logger.close()
            if hasattr(batches, "close"):
                batches.close()
    return jax.device_get(state)


def _committed_steps(ckpt_dir: str) -> list[int]:
    """The steps of ``ckpt_dir`` that orbax committed (an unfinished save is a ``<step>.orbax-checkpoint-tmp``
    directory), oldest first; none when it does not exist."""
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit() and os.path.isdir(os.path.join(ckpt_dir, n)))


def _restore_newest_intact(ckpt_dir: str, state: dict, steps: list[int], workdir: str) -> tuple[dict, int]:
    """The newest checkpoint of ``steps`` that restores, and its step. A checkpoint of another config (its
    tensors' shapes differ from ``state``'s) is an error naming it; a broken one (a truncated or missing
    file) is skipped with a warning and moved to ``workdir/broken_checkpoints``, so that the step can be
    saved again. None intact is an error."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    expected = flat_shapes(abstract)
    broken: list[tuple[str, BaseException]] = []
    for step in sorted(steps, reverse=True):
        step_dir = os.path.join(ckpt_dir, str(step))
        item = os.path.join(step_dir, "default")
        try:
            found = saved_shapes(item)
        except Exception as e:  # noqa: BLE001 (any failure to read the metadata: a broken checkpoint)
            broken.append((step_dir, e))
            continue
        # Outside the try: a checkpoint of another config is not broken, and must not be moved away.
        check_fits(expected, found, f"checkpoint {step_dir}")
        try:
            with ocp.StandardCheckpointer() as checkpointer:
                restored = checkpointer.restore(item, abstract)
        except Exception as e:  # noqa: BLE001 (any failure to read the arrays: a broken checkpoint)
            broken.append((step_dir, e))
            continue
        for path, error in broken:
            moved = _move_aside(path, os.path.join(workdir, "broken_checkpoints"))
            log.warning("checkpoint %s is broken (%s); moved it to %s and resuming from step %d instead",
                        path, first_line(error), moved, step)
        return restored, step
    raise ValueError(
        f"no intact checkpoint in {ckpt_dir}: "
        + "; ".join(f"{os.path.basename(p)}: {first_line(e)}" for p, e in broken)
        + " (move the directory away to train from scratch)"
    )


def _move_aside(path: str, parent: str) -> str:
    """Moves directory ``path`` into ``parent`` under a name not taken yet; returns the new path."""
    os.makedirs(parent, exist_ok=True)
    dest = os.path.join(parent, os.path.basename(path))
    n = 1
    while os.path.exists(dest):
        dest, n = os.path.join(parent, f"{os.path.basename(path)}.{n}"), n + 1
    if jax.process_index() == 0:
        shutil.move(path, dest)
    return dest


def _check_free_space(workdir: str, state: dict) -> None:
    """Fails before training when the workdir's disk cannot hold one checkpoint of ``state``."""
    need = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(state))
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise OSError(f"--workdir {workdir}: {free / 2**20:.0f} MiB free on its disk, a checkpoint of this train "
                      f"state needs about {need / 2**20:.0f} MiB")


def _check_save(manager: ocp.CheckpointManager, step: int | None, *, block: bool,
                on_done=None) -> int | None:
    """Checks the background save of checkpoint ``step`` once it has finished (at once with ``block``):
    its error is raised as one ``CheckpointSaveError`` naming the step, else ``on_done()`` is called (the
    trainer flushes the event file: the steps a committed checkpoint covers are then logged on disk too, so
    a kill after it loses no logged step). Returns ``step`` while the save is still running, else None."""
    if step is None or (not block and manager.is_saving_in_progress()):
        return step
    step_dir = os.path.join(str(manager.directory), str(step))
    try:
        # The finished save's error comes from wait_until_finished: orbax's own finalize thread has already
        # taken it from the checkpointer, so check_for_errors alone would miss it.
        manager.wait_until_finished()
        manager.check_for_errors()
    except Exception as e:
        raise CheckpointSaveError(f"checkpoint step {step}: saving to {step_dir} failed: {first_line(e)}") from e
    if jax.process_index() == 0 and not os.path.isdir(step_dir):
        raise CheckpointSaveError(f"checkpoint step {step}: {step_dir} was not written (orbax logged why; "
                                  "--verbose shows it)")
    if on_done is not None:
        on_done()
    return None


def _check_finite(pending: list[tuple[int, dict, list[str]]]) -> dict:
    """The last step's host metrics, after checking every pending step's loss in order: the first
    non-finite one raises with its step and the clips of its batch."""
    for step, metrics, clip_ids in pending:
        if not math.isfinite(float(metrics["loss"])):
            raise FloatingPointError(
                f"non-finite loss {float(metrics['loss'])} at step {step} "
                f"(terms: { {k: float(v) for k, v in metrics.items()} }); clips of this batch: {clip_ids}"
            )
    return pending[-1][1]
