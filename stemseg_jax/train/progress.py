"""Progress bar, TensorBoard scalars and periodic image summaries for training."""

from __future__ import annotations

import os

import jax
import numpy as np
import tqdm

_SHORT = {"lovasz": "lov", "smoothness": "smooth", "seediness": "seed", "semseg": "sem", "foreground": "fg"}


class TrainLogger:
    def __init__(self, config, workdir: str, *, start: int, total: int, enabled: bool = True):
        self.config = config
        self.enabled = enabled
        self.every = max(1, int(config.train.log_every))
        self._bar = None
        self._writer = None
        self._model = None
        self._times: list[float] = []
        if enabled:
            self._bar = tqdm.tqdm(total=total, initial=start, dynamic_ncols=True, desc="train", unit="step")
            try:
                from tensorboardX import SummaryWriter

                self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # TensorBoard logging is optional; the progress bar still works
                self._writer = None

    def log_step(self, step: int, metrics: dict, seconds: float) -> None:
        if not self.enabled:
            return
        self._times.append(seconds)
        self._bar.update(1)
        if step % self.every == 0 or step == 1:
            recent = self._times[-self.every :]
            shown = {_SHORT.get(k, k): f"{float(v):.4g}" for k, v in metrics.items() if k not in ("grad_norm",)}
            shown["s/step"] = f"{np.median(recent):.2f}"
            self._bar.set_postfix(shown, refresh=False)
            if self._writer is not None:
                for k, v in metrics.items():
                    self._writer.add_scalar(f"train/{k}", float(v), step)
                self._writer.add_scalar("train/seconds_per_step", float(np.median(recent)), step)

    def log_images(self, step: int, state: dict, batch: dict) -> None:
        """Writes a frame, its seediness map and its clustered instances for the first clip of the batch."""
        if not self.enabled or self._writer is None:
            return
        from stemseg_jax.train.summaries import clip_summary_images

        images = clip_summary_images(self.config, jax.device_get(state), np.asarray(batch["images"][:1]))
        for name, image in images.items():
            self._writer.add_image(f"train/{name}", image, step, dataformats="HWC")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
