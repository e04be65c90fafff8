"""Layers with PyTorch semantics that Flax does not provide directly.

Everything is channels-last: 2D maps are ``[N, H, W, C]``, 3D maps ``[N, T, H, W, C]``.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Dtype = jnp.dtype | str


def torch_default_kernel_init() -> Callable:
    """PyTorch's default conv init (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Callable:
    bound = 1.0 / np.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class FrozenBatchNorm(nn.Module):
    """maskrcnn-benchmark's FrozenBatchNorm2d: ``y = x * w / sqrt(var) + (b - mean * w / sqrt(var))``, ε = 0.

    The four buffers live in the ``frozen_bn`` collection (one-to-one with the official state dict).
    With ``calibrate=True`` and the collection mutable, ``running_mean``/``running_var`` are set to the
    input's batch statistics first: a data-dependent initialisation for training from scratch (the demo),
    where identity BN would let activations grow through 16+ residual blocks.
    """

    calibrate: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        weight = self.variable("frozen_bn", "weight", jnp.ones, (c,), jnp.float32)
        bias = self.variable("frozen_bn", "bias", jnp.zeros, (c,), jnp.float32)
        mean = self.variable("frozen_bn", "running_mean", jnp.zeros, (c,), jnp.float32)
        var = self.variable("frozen_bn", "running_var", jnp.ones, (c,), jnp.float32)
        if self.calibrate and self.is_mutable_collection("frozen_bn"):
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean.value = jnp.mean(xf, axis=axes)
            var.value = jnp.var(xf, axis=axes) + 1e-5
        scale = weight.value * lax.rsqrt(var.value)
        shift = bias.value - mean.value * scale
        return x * scale.astype(x.dtype) + shift.astype(x.dtype)


class Conv3x3x3(nn.Module):
    """3D convolution, kernel 3x3x3, stride 1, padding 1 (PyTorch ``Conv3d`` defaults incl. its init).

    The kernel is stored ``[3, 3, 3, C_in, C_out]`` (DHWIO) whatever the implementation:
      * ``"direct"``: ``lax.conv_general_dilated`` in 3D.
      * ``"shifted2d"``: one 2D convolution of every frame with the three temporal kernel slices stacked
        on the output axis (``[3, 3, C_in, 3 * C_out]``), then ``out[t] = z0[t-1] + z1[t] + z2[t+1]``.
        XLA:CPU runs 3D convolutions through a slow generic path; the 2D form uses its fast kernels, and
        computing the three slices as one wide convolution (rather than three) keeps the matmuls large.
    """

    features: int
    use_bias: bool = True
    impl: str = "shifted2d"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``[N, T, H, W, C_in]`` -> ``[N, T, H, W, features]``."""
        c_in = x.shape[-1]
        kernel = self.param("kernel", torch_default_kernel_init(), (3, 3, 3, c_in, self.features), jnp.float32)
        kernel = kernel.astype(self.dtype)
        x = x.astype(self.dtype)
        if self.impl == "direct":
            y = lax.conv_general_dilated(
                x, kernel, (1, 1, 1), [(1, 1)] * 3, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
            )
        elif self.impl == "shifted2d":
            n, t, h, w, _ = x.shape
            k2d = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(3, 3, c_in, 3 * self.features)
            z = lax.conv_general_dilated(
                x.reshape(n * t, h, w, c_in), k2d, (1, 1), [(1, 1)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
            ).reshape(n, t, h, w, 3, self.features)
            zero = jnp.zeros_like(z[:, :1, ..., 0, :])
            y = (
                jnp.concatenate([zero, z[:, :-1, ..., 0, :]], axis=1)
                + z[:, :, ..., 1, :]
                + jnp.concatenate([z[:, 1:, ..., 2, :], zero], axis=1)
            )
        else:
            raise ValueError(f"unknown conv3d_impl {self.impl!r}; expected 'direct' or 'shifted2d'")
        if self.use_bias:
            bias = self.param("bias", torch_default_bias_init(27 * c_in), (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def conv1x1x1(features: int, use_bias: bool, dtype: Dtype, name: str) -> nn.Conv:
    """A pointwise 3D conv (kernel stored ``[1, 1, 1, C_in, C_out]`` like the official OIDHW tensors)."""
    return nn.Conv(
        features, (1, 1, 1), use_bias=use_bias, dtype=dtype, kernel_init=torch_default_kernel_init(), name=name
    )


def avg_pool_t2(x: jax.Array) -> jax.Array:
    """PyTorch ``AvgPool3d(3, stride=(2, 1, 1), padding=1)``, count_include_pad=True (spec §2.2).

    ``[N, T, H, W, C]`` -> ``[N, floor((T - 1) / 2) + 1, H, W, C]``. It also box-blurs 3x3 in space and,
    because the zero padding is counted, attenuates border frames and pixels — as the official decoder does.
    """
    return nn.avg_pool(x, (3, 3, 3), strides=(2, 1, 1), padding=((1, 1),) * 3, count_include_pad=True)


def upsample2x_linear(x: jax.Array, axis: int) -> jax.Array:
    """Linear 2x upsampling along ``axis`` with half-pixel centres (PyTorch ``align_corners=False``).

    out[2i] = 0.25 x[i-1] + 0.75 x[i] and out[2i+1] = 0.75 x[i] + 0.25 x[i+1], with the source index
    clamped at the borders — exactly ``F.interpolate(scale_factor=2, mode="(bi|tri)linear")``. Written
    with slices because ``jax.image.resize`` builds dense interpolation matrices.
    """
    n = x.shape[axis]
    prev = jnp.concatenate([lax.slice_in_dim(x, 0, 1, axis=axis), lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
    nxt = jnp.concatenate([lax.slice_in_dim(x, 1, n, axis=axis), lax.slice_in_dim(x, n - 1, n, axis=axis)], axis)
    even = 0.25 * prev + 0.75 * x
    odd = 0.75 * x + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)


def upsample(x: jax.Array, factors: tuple[int, ...], first_axis: int = 1) -> jax.Array:
    """Upsamples consecutive axes starting at ``first_axis`` by factors of 1 or 2 (half-pixel linear)."""
    for i, f in enumerate(factors):
        if f == 2:
            x = upsample2x_linear(x, first_axis + i)
        elif f != 1:
            raise ValueError(f"only upsampling factors 1 and 2 are supported, got {factors}")
    return x


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """PyTorch ``MaxPool2d(3, stride=2, padding=1)`` on ``[N, H, W, C]`` (padding with -inf)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
