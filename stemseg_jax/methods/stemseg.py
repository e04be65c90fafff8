"""STEm-Seg as a method: a trained network (``inference.video.VideoSegmenter``) restored from a checkpoint."""

from __future__ import annotations

import os

from stemseg_jax.checkpoints import restore_model_variables


def restore_variables(config, workdir: str | None) -> dict:
    """Model variables from ``config.inference.checkpoint`` (a converted model or a train checkpoint
    step directory) or else from the newest checkpoint of ``workdir/checkpoints``. From a train state
    with a moving average (``train.ema_decay``) the average, unless ``inference.use_ema`` is False."""
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
    return restore_model_variables(path, "config.inference.checkpoint", config.inference.get("use_ema", True))


def build(config, workdir: str | None, class_mode: str | None):
    """``VideoSegmenter`` with the restored variables, summarising classes per track in ``class_mode``."""
    from stemseg_jax.inference.video import VideoSegmenter

    return VideoSegmenter(config, restore_variables(config, workdir), class_mode=class_mode)
