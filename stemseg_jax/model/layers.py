"""Layers with PyTorch semantics that Flax does not provide directly.

Everything is channels-last: 2D maps are ``[N, H, W, C]``, 3D maps ``[N, T, H, W, C]``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from stemseg_jax.xla_cpu import eigen_convolutions

Dtype = jnp.dtype | str


def torch_default_kernel_init() -> Callable:
    """PyTorch's default conv init (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Callable:
    bound = 1.0 / np.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


# Below this many input or output channels XLA:CPU's own kernel gradient is as fast as per-tap products.
_TAPS_MIN_CHANNELS = 64


def _dot_conv1x1(lhs: jax.Array, rhs: jax.Array, strides) -> jax.Array:
    """A 1x1(x1) convolution as one matrix product: ``[N, *S, C_in] x [1.., C_in, C_out]``."""
    if any(s != 1 for s in strides):
        lhs = lhs[(slice(None),) + tuple(slice(None, None, s) for s in strides)]
    return _pointwise(lhs, rhs.reshape(rhs.shape[-2:])).astype(jnp.result_type(lhs, rhs))


def _channel_product(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def _pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` over the channel axis: ``[..., C_in] x [C_in, C_out] -> [..., C_out]``."""
    return _channel_product(x, kernel)


def _pointwise_fwd(x, kernel):
    return _channel_product(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, grad):
    """The kernel gradient contracts every pixel, so XLA:CPU copies ``grad`` into a transposed layout
    first; left to itself it fuses the incoming gradient's elementwise producers (ReLU mask, frozen-BN
    scale, residual sum) into that transposing copy, which then reads five or more maps in transposed
    order: 26-94 ms per ResNet-101 bottleneck at 8x256x448 against ~10 for the plain copy (per-op trace).
    ``materialize`` computes the gradient once, in its own layout, and the copy only moves it; the same
    for ``x``, whose producer (frozen BN + ReLU) would otherwise be recomputed in transposed order."""
    x, kernel = residuals
    x, grad = materialize(x), materialize(grad)
    pixels = tuple(range(x.ndim - 1))
    d_kernel = lax.dot_general(x, grad, ((pixels, pixels), ((), ())))
    return _channel_product(grad, kernel.T), d_kernel


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def _conv2d_forward(lhs: jax.Array, rhs: jax.Array, padding) -> jax.Array:
    """Stride-1 NHWC/HWIO convolution. Not tiled into row strips any more: with XLA's Eigen
    convolutions strips no longer paid (train step 8.58 s untiled against 8.94 tiled, same session), and
    the strips and their concatenation doubled the widest decoder map (2 x 1.26 GiB, the 16-frame
    stage-2 peak)."""
    return lax.conv_general_dilated(lhs, rhs, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d_stride1(lhs: jax.Array, rhs: jax.Array, padding, sequential_taps: bool = False) -> jax.Array:
    return _conv2d_forward(lhs, rhs, padding)


def _conv2d_stride1_fwd(lhs, rhs, padding, sequential_taps=False):
    return _conv2d_forward(lhs, rhs, padding), (lhs, rhs)


def after(dependency: jax.Array, index: int) -> jax.Array:
    """The int32 ``index``, as a value XLA can compute only once ``dependency`` exists (see ``materialize``)."""
    predicate = dependency.reshape(-1)[0] > 0
    return lax.cond(predicate, lambda v: v, lambda v: lax.optimization_barrier(v), jnp.int32(index))


def _conv2d_stride1_bwd(padding, sequential_taps, residuals, grad):
    """Input gradient: the transposed convolution. Kernel gradient: one matrix product
    per tap, contracting over every output pixel. XLA:CPU's own kernel-gradient convolution reaches
    6 GF/s on a 64x112x256 -> 384 map where the per-tap products reach ~50 (measured); with fewer than
    64 channels on either side XLA's is faster (the tap slices' copies dominate: the :tiny train step was
    1.2x slower with them), so it is kept there.

    Each tap's window is copied into the matrix product's layout (``[C_in, N*H*W]``, as large as the input
    map); XLA:CPU's scheduler makes all nine copies before the first product (9x the map at once: 7.5 of
    the 24.4 GiB of the 16-frame stage-2 step). With ``sequential_taps`` (``model.remat=True``) each
    window's offset is only known once the previous tap's product is, so one copy is alive at a time;
    the products and their sums are the same.

    With XLA's own (Eigen) convolutions (``xla_cpu.eigen_convolutions()``, what importing stemseg_jax
    selects) its kernel gradient is faster than the per-tap products (287 against 108 GFLOP/s on the
    8x64x112, 256 -> 384 map) and needs no window copies, so it is used at every size."""
    lhs, rhs = residuals
    # Not recomputed inside the kernel gradient's transposing copies (see ``_pointwise_bwd``).
    lhs, grad = materialize(lhs), materialize(grad)
    kh, kw, c_in, c_out = rhs.shape
    (top, bottom), (left, right) = padding
    flipped = jnp.flip(rhs, (0, 1)).transpose(0, 1, 3, 2)
    d_lhs = _conv2d_forward(grad, flipped, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)))
    if min(c_in, c_out) < _TAPS_MIN_CHANNELS or eigen_convolutions():
        conv = lambda w: lax.conv_general_dilated(  # noqa: E731
            lhs, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return d_lhs, jax.vjp(conv, rhs)[1](grad)[0]
    padded = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h, out_w = grad.shape[1:3]
    contract = (((0, 1, 2), (0, 1, 2)), ((), ()))
    taps = []
    for i in range(kh):
        for j in range(kw):
            if sequential_taps and taps:
                start = (0, after(taps[-1], i), j, 0)
                window = lax.dynamic_slice(padded, start, (padded.shape[0], out_h, out_w, c_in))
            else:
                window = padded[:, i : i + out_h, j : j + out_w]
            taps.append(lax.dot_general(window, grad, contract))
    return d_lhs, jnp.stack(taps).reshape(kh, kw, c_in, c_out).astype(rhs.dtype)


_conv2d_stride1.defvjp(_conv2d_stride1_fwd, _conv2d_stride1_bwd)


def cpu_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    sequential_taps: bool = False,
    **kwargs,
) -> jax.Array:
    """``lax.conv_general_dilated`` for channels-last maps, re-expressed where XLA:CPU is slow.

    Same arguments and result as the ``lax`` function (``nn.Conv(conv_general_dilated=...)`` passes
    them). Rewrites, all exact up to float summation order, chosen by the shapes alone:
      * 1x1 (and 1x1x1) kernels become a matrix product (strided ones slice first): XLA:CPU's generic
        convolution runs them at 20-50 % of its matmul rate on large maps.
      * the kernel gradient of a stride-1 2D convolution with at least ``_TAPS_MIN_CHANNELS`` channels on
        both sides is one matrix product per tap (``_conv2d_stride1_bwd``), one tap after the other with
        ``sequential_taps`` (``conv_function(..., sequential_taps=True)``, under ``model.remat``).
    Anything else (dilation, groups, another layout) goes to ``lax.conv_general_dilated`` unchanged.
    """
    nd = lhs.ndim - 2
    channels_last = (
        dimension_numbers is not None
        and tuple(dimension_numbers.lhs_spec) == (0, nd + 1) + tuple(range(1, nd + 1))
        and tuple(dimension_numbers.rhs_spec) == (nd + 1, nd) + tuple(range(nd))
        and tuple(dimension_numbers.out_spec) == tuple(dimension_numbers.lhs_spec)
    )
    plain = (
        channels_last
        and feature_group_count == 1
        and not kwargs
        and all(d == 1 for d in (lhs_dilation or (1,) * nd))
        and all(d == 1 for d in (rhs_dilation or (1,) * nd))
        and not isinstance(padding, str)
    )
    if plain and all(k == 1 for k in rhs.shape[:nd]) and all(tuple(p) == (0, 0) for p in padding):
        return _dot_conv1x1(lhs, rhs, tuple(window_strides))
    padding = tuple(tuple(int(v) for v in p) for p in padding) if plain else padding
    if (
        plain
        and nd == 2
        and tuple(window_strides) == (1, 1)
        and all(0 <= v < k for (p0, p1), k in zip(padding, rhs.shape[:2]) for v in (p0, p1))
    ):
        return _conv2d_stride1(lhs, rhs, padding, sequential_taps)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count, precision=precision, **kwargs,
    )


def pixel_sums(x: jax.Array, per_clip: bool = False) -> jax.Array:
    """Sums of ``x [N, ..., C]`` over every axis but the channels (``per_clip``: but the first and the
    channels too) -> ``[C]`` (``[N, C]``).

    On the CPU backend a product with a vector of ones: XLA:CPU rewrites large reductions into a
    two-level reduce-window (for accuracy) that ran at ~0.5 GB/s, 30-60 ms for one 8x64x112x128 bias
    or GroupNorm gradient at 8x256x448 (per-op trace), where the matrix-vector product streams the map
    once. Elsewhere ``jnp.sum``."""
    n, c = x.shape[0], x.shape[-1]
    if jax.default_backend() != "cpu":
        return jnp.sum(x, axis=tuple(range(1 if per_clip else 0, x.ndim - 1)))
    if per_clip:
        rows = x.reshape(n, -1, c)
        ones = jnp.ones((n, rows.shape[1]), x.dtype)
        return lax.dot_general(ones, rows, (((1,), (1,)), ((0,), (0,))))
    rows = x.reshape(-1, c)
    return lax.dot_general(jnp.ones((rows.shape[0],), x.dtype), rows, (((0,), (0,)), ((), ())))


@jax.custom_vjp
def add_bias(x: jax.Array, bias: jax.Array) -> jax.Array:
    """``x [..., C] + bias [C]``, whose bias gradient is ``pixel_sums`` of the incoming gradient."""
    return x + bias


def _add_bias_fwd(x, bias):
    return x + bias, None


def _add_bias_bwd(_, grad):
    return grad, pixel_sums(grad)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def materialize(x: jax.Array) -> jax.Array:
    """The identity, written so that XLA:CPU keeps ``x`` as one buffer instead of recomputing it.

    XLA:CPU duplicates cheap elementwise producers into every consumer fusion. Along a residual stream
    (``y_k = relu(f_k(y_{k-1}) + y_{k-1})``) that recomputes the whole chain of earlier epilogues inside
    each block's epilogue: ResNet-101's layer3 fusions read all 23 block outputs (up to 122 operands), a
    cost quadratic in depth. ``lax.optimization_barrier`` does not stop it: XLA:CPU expands barriers
    before fusion. A conditional is a fusion boundary that survives; both branches return ``x``
    unchanged, so the value is exactly ``x`` whichever branch the (data-dependent) predicate picks. Only
    for the CPU backend (``conv2d_impl="cpu"``): on a GPU the predicate costs a device-to-host copy.
    """
    predicate = x.reshape(-1)[0] > 0
    # Two structurally different branches: with two plain identities XLA folds the conditional away.
    return lax.cond(predicate, lambda v: v, lambda v: lax.optimization_barrier(v), x)


def conv_function(impl: str, sequential_taps: bool = False) -> Callable | None:
    """``model.conv2d_impl`` -> the ``conv_general_dilated`` that ``nn.Conv`` should use (None: lax's).
    ``sequential_taps``: the low-memory kernel gradient of ``cpu_conv_general_dilated`` (``model.remat``)."""
    if impl == "xla":
        return None
    if impl == "cpu":
        return functools.partial(cpu_conv_general_dilated, sequential_taps=True) if sequential_taps else (
            cpu_conv_general_dilated
        )
    # "auto" is resolved by ``model.resolve_conv2d_impl`` before the modules are built.
    raise ValueError(f"unknown conv2d_impl {impl!r}; expected 'cpu' or 'xla'")


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


def _shift_time(x: jax.Array, offset: int) -> jax.Array:
    """``out[:, t] = x[:, t - offset]``, zero where ``t - offset`` is outside the clip (``offset`` is +-1)."""
    zero = jnp.zeros_like(x[:, :1])
    return jnp.concatenate([zero, x[:, :-1]], axis=1) if offset > 0 else jnp.concatenate([x[:, 1:], zero], axis=1)


@jax.custom_vjp
def shifted_sum(z: jax.Array) -> jax.Array:
    """``z [N, T, H, W, 3, F]`` (a frame's 2D convolution with the three temporal kernel slices) ->
    ``y[t] = z[t-1, 0] + z[t, 1] + z[t+1, 2]`` ``[N, T, H, W, F]``, zero outside the clip: the 3D
    convolution's temporal sum."""
    return _shift_time(z[..., 0, :], 1) + z[..., 1, :] + _shift_time(z[..., 2, :], -1)


def _shifted_sum_fwd(z):
    return shifted_sum(z), None


def _shifted_sum_bwd(_, grad):
    """``dz`` in one pass: differentiated term by term, each term's transpose was a zero-padded map as
    large as ``z`` and XLA:CPU kept the three of them and their sum alive together (4 x 1.26 GiB in the
    16-frame stage-2 backward)."""
    return (jnp.stack([_shift_time(grad, -1), grad, _shift_time(grad, 1)], axis=-2),)


shifted_sum.defvjp(_shifted_sum_fwd, _shifted_sum_bwd)


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
    conv2d_impl: str = "xla"  # how the shifted2d form runs its 2D convolution (see ``conv_function``)
    sequential_taps: bool = False  # its low-memory kernel gradient (``conv_function``; under model.remat)

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
            conv2d = conv_function(self.conv2d_impl, self.sequential_taps) or lax.conv_general_dilated
            dims = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))
            z = conv2d(x.reshape(n * t, h, w, c_in), k2d, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims)
            y = shifted_sum(z.reshape(n, t, h, w, 3, self.features))
            if self.conv2d_impl == "cpu":
                y = materialize(y)
        else:
            raise ValueError(f"unknown conv3d_impl {self.impl!r}; expected 'direct' or 'shifted2d'")
        if self.use_bias:
            bias = self.param("bias", torch_default_bias_init(27 * c_in), (self.features,), jnp.float32)
            y = add_bias(y, bias.astype(self.dtype))
        return y


def conv1x1x1(features: int, use_bias: bool, dtype: Dtype, name: str, conv2d_impl: str = "xla") -> nn.Conv:
    """A pointwise 3D conv (kernel stored ``[1, 1, 1, C_in, C_out]`` like the official OIDHW tensors)."""
    return nn.Conv(
        features, (1, 1, 1), use_bias=use_bias, dtype=dtype, kernel_init=torch_default_kernel_init(), name=name,
        conv_general_dilated=conv_function(conv2d_impl),
    )


class UpsampleConcatConv(nn.Module):
    """``conv1x1x1(concat([upsample(coarse, factors), fine]))`` without bias: the decoder's fusion step.

    The kernel is the one ``conv1x1x1`` stores (``[1, 1, 1, C_coarse + C_fine, features]``, same name and
    init), but the product is split at the concatenation and the coarse half is applied *before* the
    upsampling, which is linear and per channel, so it commutes with the channel mixing:
    ``upsample(coarse @ K_c) + fine @ K_f``. That multiplies the coarse half at the coarse resolution
    (1/4 or 1/8 of the pixels) and never builds the concatenated map or its gradient (the largest
    buffers of the 16-frame backward, 858 MiB each at full DAVIS resolution). Same function; the sums
    are only ordered differently.
    """

    features: int
    factors: tuple[int, int, int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, coarse: jax.Array, fine: jax.Array) -> jax.Array:
        """``coarse``: ``[N, T/ft, H/fh, W/fw, C_c]``, ``fine``: ``[N, T, H, W, C_f]`` -> ``[N, T, H, W, features]``."""
        c_coarse, c_in = coarse.shape[-1], coarse.shape[-1] + fine.shape[-1]
        kernel = self.param("kernel", torch_default_kernel_init(), (1, 1, 1, c_in, self.features), jnp.float32)
        kernel = kernel.reshape(c_in, self.features).astype(self.dtype)
        contract = (((coarse.ndim - 1,), (0,)), ((), ()))
        mixed = lax.dot_general(coarse.astype(self.dtype), kernel[:c_coarse], contract)
        return upsample(mixed, self.factors) + lax.dot_general(fine.astype(self.dtype), kernel[c_coarse:], contract)


def avg_pool_t2(x: jax.Array) -> jax.Array:
    """PyTorch ``AvgPool3d(3, stride=(2, 1, 1), padding=1)``, count_include_pad=True (spec §2.2).

    ``[N, T, H, W, C]`` -> ``[N, floor((T - 1) / 2) + 1, H, W, C]``. It also box-blurs 3x3 in space and,
    because the zero padding is counted, attenuates border frames and pixels — as the official decoder does.
    """
    return nn.avg_pool(x, (3, 3, 3), strides=(2, 1, 1), padding=((1, 1),) * 3, count_include_pad=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def upsample2x_linear(x: jax.Array, axis: int) -> jax.Array:
    """Linear 2x upsampling along ``axis`` with half-pixel centres (PyTorch ``align_corners=False``).

    out[2i] = 0.25 x[i-1] + 0.75 x[i] and out[2i+1] = 0.75 x[i] + 0.25 x[i+1], with the source index
    clamped at the borders — exactly ``F.interpolate(scale_factor=2, mode="(bi|tri)linear")``. Written
    with slices because ``jax.image.resize`` builds dense interpolation matrices.
    """
    return _upsample2x_forward(x, axis)


def _upsample2x_forward(x: jax.Array, axis: int) -> jax.Array:
    n = x.shape[axis]
    prev = jnp.concatenate([lax.slice_in_dim(x, 0, 1, axis=axis), lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
    nxt = jnp.concatenate([lax.slice_in_dim(x, 1, n, axis=axis), lax.slice_in_dim(x, n - 1, n, axis=axis)], axis)
    even = 0.25 * prev + 0.75 * x
    odd = 0.75 * x + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)


def _upsample2x_fwd(x, axis):
    return _upsample2x_forward(x, axis), None


def _upsample2x_bwd(axis, _, grad):
    """The transpose in closed form, one expression: dx[i] = 0.75 (g[2i] + g[2i+1]) + 0.25 (g[2i+2] +
    g[2i-1]), the clamped borders adding g[0] / g[2n-1] to themselves. Differentiating the slices and
    concatenations instead leaves XLA:CPU a chain of padded partial sums, each as large as ``dx`` (four
    of them alive at once in the 16-frame stage-2 backward)."""
    n = grad.shape[axis] // 2
    pairs = grad.reshape(grad.shape[:axis] + (n, 2) + grad.shape[axis + 1:])
    even = lax.index_in_dim(pairs, 0, axis + 1, keepdims=False)
    odd = lax.index_in_dim(pairs, 1, axis + 1, keepdims=False)

    def pad(v, before, after):
        widths = [(0, 0, 0)] * v.ndim
        widths[axis] = (before, after, 0)
        return lax.pad(v, jnp.zeros((), v.dtype), widths)

    # even[i] also reaches x[i-1] (x[0] at i = 0); odd[i] reaches x[i+1] (x[n-1] at i = n-1).
    first, last = lax.slice_in_dim(even, 0, 1, axis=axis), lax.slice_in_dim(odd, n - 1, n, axis=axis)
    from_next_even = pad(lax.slice_in_dim(even, 1, n, axis=axis), 0, 1) + pad(first, 0, n - 1)
    from_prev_odd = pad(lax.slice_in_dim(odd, 0, n - 1, axis=axis), 1, 0) + pad(last, n - 1, 0)
    grad_x = 0.75 * (even + odd) + 0.25 * (from_next_even + from_prev_odd)
    return (materialize(grad_x) if jax.default_backend() == "cpu" else grad_x,)


upsample2x_linear.defvjp(_upsample2x_fwd, _upsample2x_bwd)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float) -> jax.Array:
    """GroupNorm of ``x [N, ..., C]`` (statistics per clip and group over every other axis), affine per channel.

    The values of ``flax.linen.GroupNorm`` (float32 statistics, fast variance); the backward pass is the
    closed form — one reduction pass for the two group sums and the affine gradients, one elementwise pass
    for the input gradient — where XLA's derivative of the forward made several passes over the map
    (134 ms against PyTorch's 38 for GroupNorm + ReLU on 8x64x112x128, forward + backward).
    """
    return _group_norm_fwd(x, scale, bias, groups, eps)[0]


def _group_norm_fwd(x, scale, bias, groups, eps):
    n, c = x.shape[0], x.shape[-1]
    xg = x.reshape(n, -1, groups, c // groups).astype(jnp.float32)
    mean = jnp.mean(xg, axis=(1, 3), keepdims=True)  # [N, 1, G, 1]
    mean2 = jnp.mean(jnp.square(xg), axis=(1, 3), keepdims=True)
    rstd = lax.rsqrt(jnp.maximum(0.0, mean2 - jnp.square(mean)) + eps)  # flax's fast variance
    y = (xg - mean) * (rstd * scale.reshape(groups, c // groups).astype(jnp.float32)) + bias.reshape(
        groups, c // groups
    ).astype(jnp.float32)
    return y.reshape(x.shape).astype(x.dtype), (x, scale, mean, rstd)


def _group_norm_bwd(groups, eps, residuals, dy):
    # Every reduction of the closed form comes from two per-clip channel sums (``pixel_sums``):
    # sum(dy) and sum(dy * xhat); the group means and the affine gradients are small sums of those.
    x, scale, mean, rstd = residuals
    n, c = x.shape[0], x.shape[-1]
    shape = (n, -1, groups, c // groups)
    xhat = (x.reshape(shape).astype(jnp.float32) - mean) * rstd
    dyg = dy.reshape(shape).astype(jnp.float32)
    sum_dy = pixel_sums(dyg.reshape(n, -1, c), per_clip=True)  # [N, C]
    sum_dy_xhat = pixel_sums((dyg * xhat).reshape(n, -1, c), per_clip=True)
    scale32 = scale.astype(jnp.float32)
    count = dyg.shape[1] * (c // groups)

    def group_mean(per_channel):  # [N, C] channel sums -> [N, 1, G, 1] group means of (dy * scale) terms
        per_group = jnp.sum((per_channel * scale32).reshape(n, groups, c // groups), axis=-1)
        return per_group.reshape(n, 1, groups, 1) / count

    g = dyg * scale32.reshape(groups, c // groups)
    dx = rstd * (g - group_mean(sum_dy) - xhat * group_mean(sum_dy_xhat))
    d_scale, d_bias = jnp.sum(sum_dy_xhat, axis=0), jnp.sum(sum_dy, axis=0)
    return dx.reshape(x.shape).astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nn.Module):
    """``flax.linen.GroupNorm`` (same parameters ``scale``/``bias`` and values) with ``group_norm``'s
    closed-form backward pass. ``[N, ..., C]`` -> same shape, in ``dtype``."""

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {self.num_groups} groups do not divide {c} channels")
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return group_norm(x.astype(self.dtype), scale, bias, self.num_groups, float(self.epsilon))
