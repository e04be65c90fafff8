"""Conversion of the official STEm-Seg PyTorch checkpoints into this project's Flax variables.

The official code (github sabarim/STEm-Seg) releases ``davis.pth``, ``youtube_vis.pth`` and
``kitti_mots.pth`` (dicts whose ``"model"`` entry is the full state dict) and the Mask R-CNN backbone
``mask_rcnn_R_101_FPN_backbone.pth`` (the backbone's state dict without the ``backbone.`` prefix);
spec: stemseg_method.md §1.3, §2.6.

The mapping is derived from the Flax variable tree, one official tensor per Flax leaf:
  * ``layer1_0`` / ``downsample_1`` / ``block_32x_4`` become ``layer1.0`` / ``downsample.1`` /
    ``block_32x.4`` (PyTorch ``Sequential`` indices); the decoders' ``decoder`` level does not exist
    in the official modules (the heads subclass the decoder there).
  * ``kernel`` -> ``weight`` (OIHW -> HWIO, OIDHW -> DHWIO), GroupNorm ``scale`` -> ``weight``.
  * ``buffers/free_dim_bandwidths`` lives in the official loss module:
    ``embedding_loss_criterion.free_dim_bandwidths``.

Conversion is strict: every official tensor must be consumed, every Flax variable filled and every
shape must agree, otherwise one ``CheckpointMismatchError`` lists all problems.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import jax
import numpy as np

COLLECTIONS = ("params", "frozen_bn", "buffers")
TORCH_INSTALL_HINT = "pip install torch==2.13.0"

_SEQUENTIAL_INDEX = re.compile(r"^(layer\d+|downsample|block_\d+x)_(\d+)$")
_OFFICIAL_BUFFER_NAMES = {("free_dim_bandwidths",): "embedding_loss_criterion.free_dim_bandwidths"}


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model built from the config."""


@dataclass(frozen=True)
class TensorMapping:
    """How one official tensor fills one Flax variable."""

    official_name: str
    collection: str
    path: tuple[str, ...]
    official_shape: tuple[int, ...]
    shape: tuple[int, ...]

    def transform(self, value: np.ndarray) -> np.ndarray:
        """Official layout -> Flax layout (conv kernels only; everything else is unchanged)."""
        return np.transpose(value, _kernel_permutation(len(self.official_shape))) if self._is_kernel else value

    @property
    def _is_kernel(self) -> bool:
        return self.path[-1] == "kernel"


def _kernel_permutation(ndim: int) -> tuple[int, ...]:
    # OIHW -> HWIO and OIDHW -> DHWIO: spatial axes first, then in, then out.
    return tuple(range(2, ndim)) + (1, 0)


def _official_kernel_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (flax_shape[-1], flax_shape[-2]) + tuple(flax_shape[:-2])


def official_name(collection: str, path: tuple[str, ...]) -> str:
    """The official state-dict key of the Flax variable ``collection/path``.

    ``("frozen_bn", ("backbone", "body", "layer1_0", "bn1", "weight"))`` -> ``backbone.body.layer1.0.bn1.weight``.
    """
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown variable collection {collection!r}; expected one of {COLLECTIONS}")
    if collection == "buffers" and tuple(path) in _OFFICIAL_BUFFER_NAMES:
        return _OFFICIAL_BUFFER_NAMES[tuple(path)]
    parts = []
    for i, name in enumerate(path):
        last = i == len(path) - 1
        if name == "decoder" and not last:
            continue
        if last and collection == "params" and name in ("kernel", "scale"):
            name = "weight"
        match = _SEQUENTIAL_INDEX.match(name)
        parts.append(f"{match.group(1)}.{match.group(2)}" if match else name)
    return ".".join(parts)


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix + (str(key),)))
        else:
            out[prefix + (str(key),)] = value
    return out


def _unflatten(flat: Mapping[tuple[str, ...], object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def plan_conversion(
    source_shapes: Mapping[str, tuple[int, ...]], expected: Mapping, source: str = "the checkpoint"
) -> list[TensorMapping]:
    """Matches official tensor names/shapes to the expected Flax variables.

    Args:
      source_shapes: official key -> shape (PyTorch layout).
      expected: a variable tree ``{collection: {...}}`` whose leaves have ``.shape`` (arrays or
        ``jax.ShapeDtypeStruct``), e.g. from ``expected_variables``.
      source: a name for error messages (the input file).

    Returns:
      One ``TensorMapping`` per expected leaf.

    Raises:
      CheckpointMismatchError listing every missing, unexpected and mis-shaped tensor at once.
    """
    plan, missing, mismatched = [], [], []
    consumed = set()
    for collection in expected:
        for path, leaf in _flatten(expected[collection]).items():
            name = official_name(collection, path)
            shape = tuple(leaf.shape)
            official_shape = _official_kernel_shape(shape) if path[-1] == "kernel" else shape
            if name not in source_shapes:
                missing.append(f"{name} {list(official_shape)} (-> {collection}/{'/'.join(path)})")
                continue
            consumed.add(name)
            got = tuple(source_shapes[name])
            if got != official_shape:
                mismatched.append(f"{name}: file has {list(got)}, model expects {list(official_shape)}")
                continue
            plan.append(TensorMapping(name, collection, path, official_shape, shape))
    unexpected = sorted(set(source_shapes) - consumed)
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the model built from the config:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items)
        raise CheckpointMismatchError("\n".join(lines))
    return plan


def convert_state_dict(state_dict: Mapping[str, np.ndarray], expected: Mapping, source: str = "the checkpoint") -> dict:
    """Converts an official state dict (NumPy arrays, PyTorch layouts) into a Flax variable tree.

    Returns ``{collection: nested dict of float32 NumPy arrays}`` with the collections of ``expected``
    (a collection that is empty in ``expected`` stays an empty dict).
    """
    arrays = {k: np.asarray(v) for k, v in state_dict.items()}
    plan = plan_conversion({k: v.shape for k, v in arrays.items()}, expected, source)
    flat = {}
    for m in plan:
        value = arrays[m.official_name]
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointMismatchError(f"{source}: tensor {m.official_name} has dtype {value.dtype}, expected float")
        flat[(m.collection,) + m.path] = np.array(m.transform(value), dtype=np.float32, order="C")
    variables = _unflatten(flat)
    for collection in expected:
        variables.setdefault(collection, {})
    return variables


def expected_variables(config, backbone_only: bool = False) -> dict:
    """Shapes of the model's variables (``jax.ShapeDtypeStruct`` leaves) without allocating them.

    With ``backbone_only`` only ``params/backbone`` and ``frozen_bn/backbone`` are kept, plus an empty
    ``buffers`` collection: the tree a training config names as ``train.init_checkpoint``.
    """
    from stemseg_jax.model import build_model  # noqa: PLC0415 (keeps name mapping importable without the model)

    model = build_model(config)
    images = jax.ShapeDtypeStruct((1, int(config.data.num_frames), 64, 64, 3), np.uint8)
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    shapes = dict(shapes)
    missing = [c for c in COLLECTIONS if c not in shapes and c != "buffers"]
    if missing:
        raise RuntimeError(f"the model has no variable collection(s) {missing}")
    if backbone_only:
        return {
            "params": {"backbone": shapes["params"]["backbone"]},
            "frozen_bn": {"backbone": shapes["frozen_bn"]["backbone"]},
            "buffers": {},
        }
    shapes.setdefault("buffers", {})
    return shapes


def read_state_dict(path: str, trust_pickle: bool = False) -> dict[str, np.ndarray]:
    """Reads a ``.pth`` file through PyTorch (CPU) and returns its state dict as NumPy arrays.

    Accepts a plain state dict or a training checkpoint whose ``"model"`` entry is one. By default the
    file is read with ``weights_only=True`` (no arbitrary code from the pickle); ``trust_pickle``
    allows full unpickling for files that also hold other Python objects.
    """
    try:
        import torch  # noqa: PLC0415 (optional dependency, only needed here)
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs PyTorch (CPU is enough); install it with: {TORCH_INSTALL_HINT}"
        ) from e
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # torch raises UnpicklingError (and others) for non-tensor objects
        if trust_pickle:
            raise
        raise ValueError(
            f"{path} could not be read with torch.load(weights_only=True): {e}\n"
            "If you trust this file, retry with --trust-pickle."
        ) from e
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict or a dict with a 'model' state dict, got {type(obj)}")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[str(key)] = value.detach().cpu().float().numpy() if value.is_floating_point() else value.numpy()
    return out


def _check_free_dim_bandwidths(variables: Mapping, config, source: str) -> None:
    fdb = variables.get("buffers", {}).get("free_dim_bandwidths")
    stds = tuple(config.model.free_dim_stds)
    if fdb is None or not stds:
        return
    from_config = 1.0 / np.square(np.asarray(stds, np.float64))
    if not np.allclose(np.ravel(fdb), from_config, rtol=1e-4):
        warnings.warn(
            f"{source}: free_dim_bandwidths {np.ravel(fdb).tolist()} differ from 1/std^2 of the config's "
            f"free_dim_stds {list(stds)}; the checkpoint's values are used",
            stacklevel=3,
        )


def convert_official_checkpoint(
    config, input_path: str, backbone_only: bool = False, trust_pickle: bool = False
) -> dict:
    """Reads an official ``.pth`` file and returns the Flax variables for ``config``'s model.

    With ``backbone_only`` the input is the backbone file (keys ``body.*`` and ``fpn.*``), and only
    the backbone variables are returned (see ``expected_variables``).
    """
    state = read_state_dict(input_path, trust_pickle=trust_pickle)
    if backbone_only:
        heads = sorted({k.split(".")[0] for k in state if not k.startswith(("body.", "fpn.", "backbone."))})
        if heads:
            raise CheckpointMismatchError(
                f"{input_path}: --backbone-only expects the backbone file (keys body.*, fpn.*), but it also holds "
                f"{heads}; convert a full model without --backbone-only (it can initialise training too)"
            )
        state = {k if k.startswith("backbone.") else f"backbone.{k}": v for k, v in state.items()}
    variables = convert_state_dict(state, expected_variables(config, backbone_only), source=input_path)
    _check_free_dim_bandwidths(variables, config, input_path)
    return variables


def save_variables(variables: Mapping, path: str, overwrite: bool = False) -> None:
    """Writes ``variables`` as an orbax checkpoint at ``path`` (a directory).

    Orbax writes into a temporary directory and renames it when complete, so an interrupted
    conversion never leaves a checkpoint that looks valid.
    """
    import orbax.checkpoint as ocp  # noqa: PLC0415 (slow import, only needed here)

    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"output {path} already exists; pass overwrite=True (--overwrite) to replace it")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, dict(variables), force=overwrite)
    checkpointer.wait_until_finished()


def load_variables(path: str) -> dict:
    """Restores variables written by ``save_variables`` (or the converter tool) as NumPy arrays.

    Returns ``{"params": ..., "frozen_bn": ..., "buffers": ...}``.
    """
    import orbax.checkpoint as ocp  # noqa: PLC0415

    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    variables = ocp.StandardCheckpointer().restore(path)
    missing = [c for c in ("params", "frozen_bn") if c not in variables]
    if missing:
        raise ValueError(f"{path}: not a converted model checkpoint (no collection(s) {missing})")
    variables = dict(variables)
    variables.setdefault("buffers", {})
    return variables
