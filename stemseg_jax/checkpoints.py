"""Reading model variables from the orbax checkpoints this project writes.

Two kinds exist: a train state (``{"step", "params", "opt_state", "constants"[, "ema_params"]}``, written by
``train.trainer`` under ``workdir/checkpoints/<step>``) and bare model variables (``{"params",
"frozen_bn", "buffers"}``, written by the converter). Training (``train.init_checkpoint``) and inference
(``inference.checkpoint``) both accept either, so both read them here: neither package imports the other.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def resolve_checkpoint_path(path: str, field: str) -> str:
    """The orbax directory that ``path`` names: a checkpoint directory itself, or a CheckpointManager step
    directory holding it under ``default/``. A missing path is an error naming the config ``field``."""
    path = os.path.abspath(os.path.expandvars(path))
    if os.path.isdir(os.path.join(path, "default")):
        path = os.path.join(path, "default")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{field}: {path} is not a checkpoint directory")
    return path


def restore_model_variables(path: str, field: str, use_ema: bool = True) -> dict:
    """Model variables (NumPy arrays) ``{"params", <constant collections>...}`` from a train state or a
    variables checkpoint at ``path``. From a train state that keeps a moving average of the parameters
    (``train.ema_decay``) the average is taken unless ``use_ema`` is False."""
    import orbax.checkpoint as ocp  # noqa: PLC0415 (slow import, only needed here)

    path = resolve_checkpoint_path(path, field)
    restored = ocp.StandardCheckpointer().restore(path)
    if "constants" in restored:
        take_ema = use_ema and "ema_params" in restored
        if take_ema:
            log.info("using the moving-average parameters of %s", path)
        return {"params": restored["ema_params" if take_ema else "params"], **restored["constants"]}
    if "params" not in restored:
        raise ValueError(f"{field}: {path} holds neither a train state nor model variables (keys {sorted(restored)})")
    return {"buffers": {}, **restored}
