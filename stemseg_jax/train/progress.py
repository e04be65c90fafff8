"""Progress bar, TensorBoard scalars and periodic image summaries for training."""

from __future__ import annotations

import os

import jax
import numpy as np
import tqdm

_SHORT = {"lovasz": "lov", "smoothness": "smooth", "seediness": "seed", "semseg": "sem", "foreground": "fg"}


class TrainLogger:
    """``model`` (the trained ``STEmSeg``) is needed only for the image summaries."""

    def __init__(self, config, workdir: str, *, start: int, total: int, enabled: bool = True, model=None,
                 desc: str = "train"):
        self.config = config
        self.enabled = enabled
        self._apply = jax.jit(model.apply) if model is not None else None
        self._bar = None
        self._writer = None
        if enabled:
            self._bar = tqdm.tqdm(total=total, initial=start, dynamic_ncols=True, desc=desc, unit="step")
            try:
                from tensorboardX import SummaryWriter

                self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # TensorBoard logging is optional; the progress bar still works
                self._writer = None

    def log_step(self, step: int, metrics: dict, seconds_per_step: float, steps: int = 1) -> None:
        """Logs host ``metrics`` of ``step``, the last of ``steps`` steps that took ``seconds_per_step`` each
        on average (the trainer calls this on logging steps only)."""
        if not self.enabled:
            return
        self._bar.update(steps)
        shown = {_SHORT.get(k, k): f"{float(v):.4g}" for k, v in metrics.items() if k not in ("grad_norm",)}
        shown["s/step"] = f"{seconds_per_step:.2f}"
        self._bar.set_postfix(shown, refresh=False)
        if self._writer is not None:
            for k, v in metrics.items():
                self._writer.add_scalar(f"train/{k}", float(v), step)
            self._writer.add_scalar("train/seconds_per_step", float(seconds_per_step), step)

    def log_images(self, step: int, state: dict, batch: dict) -> None:
        """Writes a frame, its seediness map and its clustered instances for the first clip of the batch."""
        if not self.enabled or self._writer is None or self._apply is None:
            return
        from stemseg_jax.train.summaries import clip_summary_images

        images = clip_summary_images(self.config, self._apply, jax.device_get(state), np.asarray(batch["images"][:1]))
        for name, image in images.items():
            self._writer.add_image(f"train/{name}", image, step, dataformats="HWC")

    def flush(self) -> None:
        """Writes the logged events to disk (the trainer calls this once a checkpoint is committed)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
