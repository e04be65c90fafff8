"""Entry point: ``python -m stemseg_jax.main --config configs/kitti.py --workdir runs/kitti [--mode train]``.

Modes:
  train     train (resuming from the newest checkpoint in --workdir)
  evaluate  run inference on the config's validation split and compute the benchmark's metrics
  infer     segment any video file or frame folder (``--config.inference.input=PATH``); writes masks,
            an overlay MP4 and a GIF to ``--workdir/infer/<name>``
  smoke     one forward + loss + backward pass of the model on a generated clip (shapes, loss terms, timings)

Config fields are overridden with ``--config.a.b=value`` (ml_collections config_flags).
"""

from __future__ import annotations

import logging
import os

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

MODES = ("train", "evaluate", "infer", "smoke")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/ (with :variants).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_string("mode", "train", f"One of {', '.join(MODES)}.")


def check_dataset_paths(config) -> None:
    """Fails with one message naming every configured dataset root that does not exist."""
    missing = []
    for name, ds in sorted(config.data.datasets.items()):
        root = os.path.expandvars(str(ds.root))
        if "$" in root or not os.path.exists(root):
            missing.append(f"  config.data.datasets.{name}.root = {ds.root!r} -> {root!r}")
    if missing:
        raise FileNotFoundError(
            "training data not found; set the dataset roots (environment variables or --config overrides):\n"
            + "\n".join(missing)
        )


def run(config, workdir: str | None, mode: str) -> int:
    if mode not in MODES:
        raise app.UsageError(f"unknown --mode {mode!r}; expected one of: {', '.join(MODES)}")
    if mode == "smoke":
        from stemseg_jax.smoke import run_smoke

        run_smoke(config)
        return 0
    if not workdir:
        raise app.UsageError(f"--workdir is required for --mode {mode}")
    if mode == "train":
        from stemseg_jax.train.trainer import train

        check_dataset_paths(config)
        train(config, workdir)
        return 0
    from stemseg_jax.runner import evaluate_split, infer_input

    if mode == "evaluate":
        evaluate_split(config, workdir)
    else:
        infer_input(config, workdir)
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config configs/kitti.py")
    # Orbax and grain log every checkpoint step at INFO through absl; keep the console to our progress.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("stemseg_jax").setLevel(logging.INFO)
    return run(_CONFIG.value, _WORKDIR.value, _MODE.value)


if __name__ == "__main__":
    app.run(main)
