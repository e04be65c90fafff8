"""The re-id network of the RI-Tracker baseline (seed supplementary Sec. III): a ResNet-50 body, global
average pooling of C5 and Hermans et al.'s TriNet head (FC 1024 + ReLU, FC -> embedding), without the
head's BatchNorm: the project's backbone has frozen BatchNorm only, and a batch of P x K crops of a few
videos gives poor batch statistics anyway.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stemseg_jax.model import resolve_conv2d_impl
from stemseg_jax.model.backbone import ResNet
from stemseg_jax.preprocessing import normalize_images

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_head_init = nn.initializers.variance_scaling(0.05**2, "fan_in", "normal")


class ReIDNet(nn.Module):
    """``[N, h, w, 3]`` BGR mean-subtracted crops (``preprocessing.normalize_images``) -> ``[N, D]`` float32.

    The ResNet is the submodule ``body``, named as in ``STEmSeg``'s ``backbone/body``, so that a STEm-Seg
    or converted Mask R-CNN checkpoint's backbone can initialise it (``reid.train``).
    """

    depth: int = 50
    width: int = 64
    embedding_dim: int = 128
    hidden: int = 1024
    freeze_at: int = 0
    dtype: jnp.dtype = jnp.float32
    calibrate: bool = False
    conv2d_impl: str = "xla"

    @nn.compact
    def __call__(self, crops: jax.Array) -> jax.Array:
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"ReIDNet expects crops [N, h, w, 3], got {crops.shape}")
        c5 = ResNet(self.depth, self.width, self.freeze_at, self.dtype, self.calibrate, conv2d_impl=self.conv2d_impl,
                    name="body")(crops)[-1]
        pooled = jnp.mean(c5.astype(jnp.float32), axis=(1, 2))
        x = nn.relu(nn.Dense(self.hidden, name="fc1")(pooled))
        # A small last layer: the initial distances are O(1), so the soft margin starts near log 2. With the
        # default init they were ~20 (tiny model) and, the embedding being unnormalised, training from scratch
        # blew the scale up or collapsed every embedding onto one point within a few steps (measured).
        return nn.Dense(self.embedding_dim, kernel_init=_head_init, name="fc2")(x)


def build_reid(cfg: ml_collections.ConfigDict, *, calibrate_bn: bool = False) -> ReIDNet:
    """The ``ReIDNet`` of ``cfg`` (a ``config.reid`` section, see ``reid.train.default_reid_config``)."""
    if cfg.dtype not in _DTYPES:
        raise ValueError(f"reid.dtype must be one of {sorted(_DTYPES)}, got {cfg.dtype!r}")
    return ReIDNet(
        depth=int(cfg.backbone_depth),
        width=int(cfg.backbone_width),
        embedding_dim=int(cfg.embedding_dim),
        hidden=int(cfg.hidden_dim),
        freeze_at=int(cfg.freeze_at),
        dtype=_DTYPES[cfg.dtype],
        calibrate=calibrate_bn,
        conv2d_impl=resolve_conv2d_impl(cfg.conv2d_impl),
    )


def embed(variables: dict, model: ReIDNet, crops) -> jax.Array:
    """Re-id vectors ``[N, D]`` of uint8 BGR crops ``[N, h, w, 3]`` (as ``reid.data.crop`` makes them).

    Callers that embed many batches should wrap this in ``jax.jit`` with ``model`` static (or close over it).
    """
    crops = jnp.asarray(crops)
    if crops.dtype != jnp.uint8:
        raise ValueError(f"embed expects uint8 BGR crops, got dtype {crops.dtype}")
    return model.apply(variables, normalize_images(crops, jnp))


def make_embedder(model: ReIDNet, batch_size: int = 64):
    """``fn(variables, crops [N, h, w, 3] uint8) -> [N, D]`` float32 NumPy over any ``N``: ``embed`` in jitted
    batches of ``batch_size``, the last one padded, so that one compiled shape serves every call (a tracker
    embeds a varying number of proposals per frame)."""
    jitted = jax.jit(lambda v, x: embed(v, model, x))

    def fn(variables: dict, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        out = []
        for i in range(0, len(crops), batch_size):
            chunk = crops[i : i + batch_size]
            n = len(chunk)
            if n < batch_size:
                chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
            out.append(np.asarray(jitted(variables, chunk))[:n])
        return np.concatenate(out) if out else np.zeros((0, model.embedding_dim), np.float32)

    return fn
