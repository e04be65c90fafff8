"""STEm-Seg as a method: a trained network (``inference.video.VideoSegmenter``) restored from a checkpoint."""

from __future__ import annotations

import os

from stemseg_jax.checkpoints import check_fits, flat_shapes, restore_model_variables

FIELD = "config.inference.checkpoint"


def restore_variables(config, workdir: str | None) -> dict:
    """Model variables from ``config.inference.checkpoint`` (a converted model or a train checkpoint
    step directory) or else from the newest checkpoint of ``workdir/checkpoints``. From a train state
    with a moving average (``train.ema_decay``) the average, unless ``inference.use_ema`` is False."""
    return restore_model_variables(checkpoint_path(config, workdir), FIELD, config.inference.get("use_ema", True))


def checkpoint_path(config, workdir: str | None) -> str:
    """The checkpoint ``restore_variables`` reads: ``config.inference.checkpoint`` or the newest step
    directory of ``workdir/checkpoints`` (none is an error naming the directory and the field)."""
    path = config.inference.checkpoint
    if not path:
        ckpt_dir = os.path.join(os.path.abspath(workdir or "."), "checkpoints")
        steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) if os.path.isdir(ckpt_dir) else []
        if not steps:
            raise FileNotFoundError(
                f"no checkpoint in {ckpt_dir}; train first or set --config.inference.checkpoint=PATH "
                "(a converted official model, see README 'Using the published weights')"
            )
        path = os.path.join(ckpt_dir, str(steps[-1]))
    return path


def check_variables(config, variables: dict, path: str) -> None:
    """Fails with one line naming ``path`` and the first mismatching tensors when ``variables`` are not
    those of ``config``'s model (e.g. a KITTI checkpoint evaluated with the DAVIS config), instead of a
    shape error deep inside the first forward pass. The model's variables are only traced (no compute)."""
    import jax  # noqa: PLC0415 (slow import)
    import jax.numpy as jnp  # noqa: PLC0415

    from stemseg_jax.model import build_model  # noqa: PLC0415

    # Parameter shapes do not depend on the frame size: a small clip is enough to trace them.
    images = jax.ShapeDtypeStruct((1, int(config.data.num_frames), 64, 64, 3), jnp.uint8)
    model = jax.eval_shape(build_model(config).init, jax.random.PRNGKey(0), images)
    expected = flat_shapes({k: v for k, v in model.items() if k != "buffers"})
    found = flat_shapes({k: v for k, v in variables.items() if k in model and k != "buffers"})
    # Buffers are fixed settings a converted checkpoint may leave out; those present must agree.
    ours, theirs = flat_shapes(model.get("buffers", {})), flat_shapes(variables.get("buffers", {}))
    for k in ours.keys() & theirs.keys():
        expected[f"buffers/{k}"], found[f"buffers/{k}"] = ours[k], theirs[k]
    check_fits(expected, found, f"{FIELD}: {path}")


def build(config, workdir: str | None, class_mode: str | None):
    """``VideoSegmenter`` with the restored variables, summarising classes per track in ``class_mode``."""
    from stemseg_jax.inference.video import VideoSegmenter

    path = checkpoint_path(config, workdir)
    variables = restore_model_variables(path, FIELD, config.inference.get("use_ema", True))
    check_variables(config, variables, path)
    return VideoSegmenter(config, variables, class_mode=class_mode)


def train(config, workdir: str) -> dict:
    """Trains the STEm-Seg network (``train.trainer.train``: resumes from the newest checkpoint in ``workdir``)."""
    from stemseg_jax.train.trainer import train as train_stemseg  # noqa: PLC0415 (slow import)

    return train_stemseg(config, workdir)
