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


def first_line(error: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``: enough to tell one failure from another in a one-line report."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    # tensorstore's first line can go on with a whole spec: the start tells what failed.
    line = line if len(line) <= limit else line[: limit - 3] + "..."
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    """``"a/b/c" -> shape`` of every array in a nested tree: arrays, ``jax.ShapeDtypeStruct``s or the
    ``ArrayMetadata`` of an orbax checkpoint. Dict keys, attribute names and tuple indices make up the
    path, so a train state and its saved metadata give the same names."""
    import jax  # noqa: PLC0415 (slow import, only needed here)
    import numpy as np  # noqa: PLC0415

    def name(entry) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(e) for e in path): tuple(getattr(v, "shape", np.shape(v))) for path, v in leaves}


def saved_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """``flat_shapes`` of the tree an orbax checkpoint directory holds, read from its metadata alone (no
    array is read). Unreadable or missing metadata raises: the checkpoint is broken."""
    import orbax.checkpoint as ocp  # noqa: PLC0415
    from etils import epath  # noqa: PLC0415

    # The handler, not a StandardCheckpointer: that one also looks for a step's metadata file in ``path`` and
    # warns on every CheckpointManager item, which keeps it one level up.
    metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(path))
    if metadata is None:
        raise ValueError(f"{path} has no readable tree metadata (_METADATA)")
    return flat_shapes(metadata.tree if hasattr(metadata, "tree") else metadata)


def check_fits(expected: dict[str, tuple], found: dict[str, tuple], what: str, limit: int = 3) -> None:
    """Fails with one line naming ``what`` and its first mismatching tensors when the shapes ``found`` in a
    checkpoint are not the ``expected`` ones of the model (a checkpoint of another config): restoring
    would otherwise fail deep inside orbax or the model, or silently restore a slice."""
    bad = []
    for k in sorted(expected.keys() | found.keys()):
        if k not in found:
            bad.append(f"{k} missing from the checkpoint")
        elif k not in expected:
            bad.append(f"{k} {found[k]} not in the model")
        elif tuple(found[k]) != tuple(expected[k]):
            bad.append(f"{k} is {tuple(found[k])} in the checkpoint, {tuple(expected[k])} in the model")
    if bad:
        more = f" (+{len(bad) - limit} more)" if len(bad) > limit else ""
        raise ValueError(f"{what} does not fit this config's model, was it written with another config? "
                         f"{len(bad)} tensors differ: {'; '.join(bad[:limit])}{more}")


def check_writable_dir(path: str, field: str = "--workdir", create: bool = True) -> str:
    """Checks that files can be written in directory ``path`` by writing, syncing and removing a small
    probe file, so a read-only or full disk is reported before any work starts, not at the first
    checkpoint. With ``create`` the directory is made first; otherwise the probe goes to the nearest
    existing parent (nothing is left behind). Returns the absolute path."""
    path = os.path.abspath(os.path.expanduser(os.path.expandvars(path)))
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{field} {path} is not a directory")
    target = path
    if create:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise OSError(f"{field} {path}: cannot create the directory: {e.strerror or e}") from e
    else:
        while not os.path.isdir(target) and os.path.dirname(target) != target:
            target = os.path.dirname(target)
    probe = os.path.join(target, f".stemseg-write-probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            # Some bytes and a sync: on a full disk creating an empty file can still succeed.
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise OSError(f"{field} {path} is not writable: cannot write {probe}: {e.strerror or e}") from e
    finally:
        if os.path.lexists(probe):
            os.remove(probe)
    return path


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
    try:
        restored = ocp.StandardCheckpointer().restore(path)
    except Exception as e:
        # orbax's own error is a long tensorstore traceback that does not say which checkpoint it read.
        raise ValueError(f"{field}: {path} could not be read (a broken or truncated checkpoint?): "
                         f"{first_line(e)}") from e
    if "constants" in restored:
        take_ema = use_ema and "ema_params" in restored
        if take_ema:
            log.info("using the moving-average parameters of %s", path)
        return {"params": restored["ema_params" if take_ema else "params"], **restored["constants"]}
    if "params" not in restored:
        raise ValueError(f"{field}: {path} holds neither a train state nor model variables (keys {sorted(restored)})")
    return {"buffers": {}, **restored}
