"""Embedding, seediness and semantic heads on top of the squeeze-expand decoder (spec §2.4–2.6, §3)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from stemseg_jax.config import EMBEDDING_MODES
from stemseg_jax.model.decoder import SqueezeExpandDecoder
from stemseg_jax.model.layers import conv1x1x1, conv_function, torch_default_kernel_init


def coordinate_grid(num_frames: int, height: int, width: int, time_scale: jax.Array, axes: tuple[str, ...]):
    """Normalised coordinates ``[T, h, w, len(axes)]`` in the order of ``axes`` (a subset of t, y, x).

    Per-axis linspace including the endpoints, on the padded output map: the shorter spatial side spans
    [-1, 1] and the longer [-aspect, aspect], so pixel spacing is equal in x and y; time spans
    [-time_scale, time_scale] (spec §3.1).
    """
    x_abs = max(1.0, width / height)
    y_abs = max(1.0, height / width)
    lin = {
        "t": jnp.linspace(-1.0, 1.0, num_frames, dtype=jnp.float32) * time_scale,
        "y": jnp.linspace(-y_abs, y_abs, height, dtype=jnp.float32),
        "x": jnp.linspace(-x_abs, x_abs, width, dtype=jnp.float32),
    }
    t, y, x = jnp.meshgrid(lin["t"], lin["y"], lin["x"], indexing="ij")
    grids = {"t": t, "y": y, "x": x}
    return jnp.stack([grids[a] for a in axes], axis=-1)


class EmbeddingHead(nn.Module):
    """Decoder + ``conv_embedding`` (tanh(0.25 x) + coordinates), ``conv_variance`` and optionally seediness.

    Returns ``(embeddings [B,T,h,w,E], bandwidth_logits [B,T,h,w,V], seediness [B,T,h,w] or None)``.
    """

    mode: str
    channels: tuple[int, int, int, int]
    with_seediness: bool
    time_scale: float = 1.0
    gn_groups: int = 32
    conv_impl: str = "shifted2d"
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    conv2d_impl: str = "xla"

    @nn.compact
    def __call__(self, features):
        coords, n_free = EMBEDDING_MODES[self.mode]
        x = SqueezeExpandDecoder(
            self.channels, self.gn_groups, self.conv_impl, self.dtype, self.conv2d_impl, self.remat, name="decoder"
        )(features)
        time_scale = self.variable("buffers", "time_scale", lambda: jnp.asarray(self.time_scale, jnp.float32))
        e_dims = len(coords) + n_free
        raw = conv1x1x1(e_dims, False, self.dtype, "conv_embedding", self.conv2d_impl)(x).astype(jnp.float32)
        _, t, h, w, _ = raw.shape
        grid = coordinate_grid(t, h, w, time_scale.value, coords)
        grid = jnp.concatenate([grid, jnp.zeros((t, h, w, n_free), jnp.float32)], axis=-1)
        embeddings = jnp.tanh(0.25 * raw) + grid
        variance = nn.Conv(
            len(coords), (1, 1, 1), dtype=self.dtype, kernel_init=torch_default_kernel_init(), name="conv_variance",
            conv_general_dilated=conv_function(self.conv2d_impl),
        )(x).astype(jnp.float32)
        seediness = None
        if self.with_seediness:
            logit = conv1x1x1(1, False, self.dtype, "conv_seediness", self.conv2d_impl)(x)
            seediness = nn.sigmoid(logit.astype(jnp.float32))[..., 0]
        return embeddings, variance, seediness


class DecoderHead(nn.Module):
    """Decoder + a bias-free 1x1x1 ``conv_out`` (the seediness and semantic heads)."""

    out_channels: int
    channels: tuple[int, int, int, int]
    gn_groups: int = 32
    conv_impl: str = "shifted2d"
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    conv2d_impl: str = "xla"

    @nn.compact
    def __call__(self, features) -> jax.Array:
        x = SqueezeExpandDecoder(
            self.channels, self.gn_groups, self.conv_impl, self.dtype, self.conv2d_impl, self.remat, name="decoder"
        )(features)
        return conv1x1x1(self.out_channels, False, self.dtype, "conv_out", self.conv2d_impl)(x).astype(jnp.float32)
