"""The squeeze-expand 3D decoder shared by the embedding, seediness and semantic heads (spec §2)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from stemseg_jax.model.layers import Conv3x3x3, GroupNorm, UpsampleConcatConv, avg_pool_t2
from stemseg_jax.model.remat import remat

# Clip length -> (which of the three pool slots pool, temporal upsampling factors) — spec §2.2.
POOL_SCHEDULE = {
    2: ((False, False, False), (1, 1, 1)),
    4: ((True, False, False), (1, 1, 2)),
    8: ((True, True, False), (1, 2, 2)),
    16: ((True, True, True), (2, 2, 2)),
    24: ((True, True, True), (2, 2, 2)),
    32: ((True, True, True), (2, 2, 2)),
}


def pool_schedule(num_frames: int):
    if num_frames not in POOL_SCHEDULE:
        raise ValueError(
            f"clip length T={num_frames} is not supported by the squeeze-expand decoder; "
            f"use one of {sorted(POOL_SCHEDULE)}"
        )
    return POOL_SCHEDULE[num_frames]


class SqueezeExpandDecoder(nn.Module):
    """Four 3D conv blocks (one per FPN level) fused top-down with trilinear upsampling.

    Input: FPN maps ``(P2, P3, P4, P5)``, each ``[B, T, H/s, W/s, C]``. Output ``[B, T, H/4, W/4, c3]``.
    Parameter names follow the official Sequential indices (``block_32x_0`` conv, ``_1`` GroupNorm, ...).
    With ``remat`` each conv + GroupNorm + ReLU (+ pool) step and each fusion step keeps only its input
    for the backward pass, which recomputes the rest (``model.remat``; see ``remat.py``).
    """

    channels: tuple[int, int, int, int] = (256, 256, 128, 128)
    gn_groups: int = 32
    conv_impl: str = "shifted2d"
    dtype: jnp.dtype = jnp.float32
    conv2d_impl: str = "xla"
    remat: bool = False

    @nn.compact
    def __call__(self, features: tuple[jax.Array, ...]) -> jax.Array:
        p2, p3, p4, p5 = features
        pools, (tau0, tau1, tau2) = pool_schedule(p2.shape[1])
        c0, c1, c2, c3 = self.channels

        def step(fn, names: tuple[str, ...], *args) -> jax.Array:
            return remat(fn, names)(self, *args) if self.remat else fn(self, *args)

        def block(x: jax.Array, features: int, n: int, name: str) -> jax.Array:
            # Official Sequential layout: conv at 4k, GN at 4k+1 (ReLU and pool slot k have no parameters).
            x = x.astype(self.dtype)
            for k in range(n):
                pool = k < 3 and pools[k] and name != "block_4x"
                conv_name, gn_name = f"{name}_{4 * k}", f"{name}_{4 * k + 1}"

                def conv_gn_relu(_, x, features=features, pool=pool, conv_name=conv_name, gn_name=gn_name):
                    x = Conv3x3x3(
                        features, impl=self.conv_impl, dtype=self.dtype, conv2d_impl=self.conv2d_impl,
                        sequential_taps=self.remat, name=conv_name,
                    )(x)
                    x = nn.relu(GroupNorm(self.gn_groups, epsilon=1e-5, dtype=self.dtype, name=gn_name)(x))
                    return avg_pool_t2(x) if pool else x

                x = step(conv_gn_relu, (conv_name, gn_name), x)
            return x

        def fuse(coarse: jax.Array, fine: jax.Array, tau: int, features: int, name: str) -> jax.Array:
            def up_concat_conv(_, coarse, fine):
                return UpsampleConcatConv(features, (tau, 2, 2), self.dtype, name=name)(coarse, fine)

            return step(up_concat_conv, (name,), coarse, fine)

        x32 = block(p5, c0, 3, "block_32x")
        x16 = block(p4, c1, 2, "block_16x")
        x8 = block(p3, c2, 1, "block_8x")
        x4 = block(p2, c3, 1, "block_4x")
        x = fuse(x32, x16, tau0, c1, "conv_16")
        x = fuse(x, x8, tau1, c2, "conv_8")
        return fuse(x, x4, tau2, c3, "conv_4")
