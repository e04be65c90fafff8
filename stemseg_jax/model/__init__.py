"""The STEm-Seg network (Flax Linen). ``build_model(config)`` is the public entry point."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from stemseg_jax.model.stemseg import STEmSeg

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config: ml_collections.ConfigDict, *, calibrate_bn: bool = False) -> STEmSeg:
    """Returns the Flax module for ``config.model`` (see ``stemseg_jax/config.py`` for the fields)."""
    m = config.model
    if m.dtype not in _DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {m.dtype!r}")
    return STEmSeg(
        embedding_mode=m.embedding_mode,
        free_dim_stds=tuple(m.free_dim_stds),
        time_scale=m.time_scale,
        backbone_depth=m.backbone_depth,
        backbone_width=m.backbone_width,
        fpn_channels=m.fpn_channels,
        freeze_at=m.freeze_at,
        freeze_backbone=m.freeze_backbone,
        seediness_from=m.seediness_head,
        embedding_channels=tuple(m.embedding_channels),
        seediness_channels=tuple(m.seediness_channels),
        semseg_channels=tuple(m.semseg_channels),
        use_semseg_head=m.use_semseg_head,
        num_classes=m.num_classes,
        foreground_channel=m.foreground_channel,
        gn_groups=m.gn_groups,
        conv3d_impl=m.conv3d_impl,
        conv2d_impl=resolve_conv2d_impl(m.get("conv2d_impl", "auto")),
        dtype=_DTYPES[m.dtype],
        remat=m.remat,
        calibrate_bn=calibrate_bn,
    )


def resolve_conv2d_impl(impl: str) -> str:
    """``model.conv2d_impl``: ``"cpu"`` (1x1 convs as matrix products, the residual stream and the kernel
    gradients' operands materialised; see ``layers.cpu_conv_general_dilated``), ``"xla"`` (plain ``lax``
    convolutions) or ``"auto"``: ``"cpu"`` when JAX's default backend is the CPU, else ``"xla"`` (GPU and
    TPU compilers pick their own kernels)."""
    if impl == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "xla"
    if impl not in ("cpu", "xla"):
        raise ValueError(f"model.conv2d_impl must be 'auto', 'cpu' or 'xla', got {impl!r}")
    return impl


def backbone_trainable(freeze_at: int, freeze_backbone: bool = False):
    """``trainable(path) -> bool`` over parameter paths of a model whose ResNet-FPN is ``backbone``: False for
    the stem and the stages before ``freeze_at`` (FREEZE_AT_STAGE), and for the whole backbone + FPN with
    ``freeze_backbone``; every other parameter is trained."""

    def trainable(path: tuple[str, ...]) -> bool:
        if path[0] != "backbone":
            return True
        if freeze_backbone:
            return False
        if len(path) > 2 and path[1] == "body":
            block = path[2]
            if block == "stem":
                return freeze_at < 1
            return int(block[len("layer") :].split("_")[0]) >= freeze_at
        return True

    return trainable


def trainable_mask(params, config: ml_collections.ConfigDict):
    """A pytree of bools over ``params``: False for frozen parameters (stem and stages before
    ``freeze_at``; the whole backbone + FPN with ``freeze_backbone``). Frozen parameters get neither
    updates nor weight decay."""
    trainable = backbone_trainable(int(config.model.freeze_at), bool(config.model.freeze_backbone))
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: trainable(k) for k in flat})


def init_variables(config: ml_collections.ConfigDict, key: jax.Array, images: jax.Array):
    """Initialises all variable collections for ``images [B, T, H, W, 3]``."""
    return build_model(config).init(key, images)


__all__ = ["STEmSeg", "backbone_trainable", "build_model", "trainable_mask", "init_variables"]
