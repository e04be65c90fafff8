"""ResNet-50/101 body and FPN as in maskrcnn-benchmark with STEm-Seg's changes (spec §1).

Input ``[N, H, W, 3]`` BGR, mean-subtracted, ``H, W`` multiples of 32. Output: P2..P5 at strides
4, 8, 16, 32, each ``[N, H/s, W/s, fpn_channels]``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from stemseg_jax.model.layers import FrozenBatchNorm, conv_function, materialize, max_pool_3x3_s2, upsample
from stemseg_jax.model.remat import remat

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}

# Backbone convs are trained from scratch only in tests and the demo (real runs start from the Mask R-CNN
# weights), so He initialisation is used rather than PyTorch's default.
_he_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(
    features: int, kernel: int, stride: int, dtype, name: str, conv2d_impl: str = "xla", use_bias: bool = False,
    sequential_taps: bool = False,
) -> nn.Conv:
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=_he_init,
        name=name,
        conv_general_dilated=conv_function(conv2d_impl, sequential_taps),
    )


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1, FrozenBN after each, projection shortcut if needed.

    The stride sits in the 1x1 ("STRIDE_IN_1X1", maskrcnn-benchmark / the official weights) or, with
    ``stride_in_1x1=False``, in the 3x3 (torchvision's ResNet, its Mask R-CNN weights).
    """

    width: int
    out_channels: int
    stride: int
    dtype: jnp.dtype = jnp.float32
    calibrate: bool = False
    conv2d_impl: str = "xla"
    stride_in_1x1: bool = True
    sequential_taps: bool = False  # the low-memory kernel gradient (``layers.conv_function``; model.remat)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bn = lambda name: FrozenBatchNorm(calibrate=self.calibrate, name=name)  # noqa: E731
        conv = lambda c, k, s, name: _conv(  # noqa: E731
            c, k, s, self.dtype, name, self.conv2d_impl, sequential_taps=self.sequential_taps
        )
        s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
        y = nn.relu(bn("bn1")(conv(self.width, 1, s1, "conv1")(x)))
        y = nn.relu(bn("bn2")(conv(self.width, 3, s3, "conv2")(y)))
        y = bn("bn3")(conv(self.out_channels, 1, 1, "conv3")(y))
        if x.shape[-1] != self.out_channels:
            x = bn("downsample_1")(conv(self.out_channels, 1, self.stride, "downsample_0")(x))
        out = nn.relu(y + x)
        # Measured: without it the layer3 epilogues of ResNet-101 recompute the residual chain (see
        # ``materialize``), ~0.9 s of a 7.5 s forward at 8x256x448 on 2 CPU cores.
        return materialize(out) if self.conv2d_impl == "cpu" else out


class ResNet(nn.Module):
    """ResNet body returning C2..C5; stages before ``freeze_at`` get no gradient (FREEZE_AT_STAGE).

    With ``remat`` each block of a trained stage keeps only its input for the backward pass, which
    recomputes the block (``remat.py``); frozen stages keep nothing either way.
    """

    depth: int = 101
    width: int = 64
    freeze_at: int = 2
    dtype: jnp.dtype = jnp.float32
    calibrate: bool = False
    remat: bool = False
    conv2d_impl: str = "xla"
    stride_in_1x1: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        if self.depth not in STAGE_BLOCKS:
            raise ValueError(f"backbone_depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth}")
        x = x.astype(self.dtype)
        stem = _StemBlock(self.width, self.dtype, self.calibrate, self.conv2d_impl, name="stem")
        x = stem(x)
        if self.freeze_at >= 1:
            x = jax.lax.stop_gradient(x)
        outputs = []
        for stage, n_blocks in enumerate(STAGE_BLOCKS[self.depth], start=1):
            width = self.width * 2 ** (stage - 1)
            for i in range(n_blocks):
                stride = 2 if (i == 0 and stage > 1) else 1
                name = f"layer{stage}_{i}"
                trained_remat = self.remat and stage >= self.freeze_at

                def block(_, x, width=width, stride=stride, name=name, trained_remat=trained_remat):
                    return Bottleneck(
                        width, 4 * width, stride, self.dtype, self.calibrate, self.conv2d_impl, self.stride_in_1x1,
                        sequential_taps=trained_remat, name=name,
                    )(x)

                x = remat(block, (name,))(self, x) if trained_remat else block(self, x)
            if stage < self.freeze_at:
                x = jax.lax.stop_gradient(x)
            outputs.append(x)
        return tuple(outputs)


class _StemBlock(nn.Module):
    width: int
    dtype: jnp.dtype
    calibrate: bool
    conv2d_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _conv(self.width, 7, 2, self.dtype, "conv1", self.conv2d_impl)(x)
        x = nn.relu(FrozenBatchNorm(calibrate=self.calibrate, name="bn1")(x))
        return max_pool_3x3_s2(x)


class FPN(nn.Module):
    """Lateral 1x1 + output 3x3 convs (with bias, no norm/ReLU), bilinear top-down upsampling (spec §1.2).

    ``upsample="nearest"`` is the top-down path of maskrcnn-benchmark / torchvision (Mask R-CNN proposals).
    """

    channels: int = 256
    dtype: jnp.dtype = jnp.float32
    conv2d_impl: str = "xla"
    upsample: str = "bilinear"
    sequential_taps: bool = False  # the low-memory kernel gradient (``layers.conv_function``; model.remat)

    @nn.compact
    def __call__(self, feats: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        conv = lambda k, name: nn.Conv(  # noqa: E731
            self.channels, (k, k), padding=((k // 2, k // 2),) * 2, dtype=self.dtype, name=name,
            conv_general_dilated=conv_function(self.conv2d_impl, self.sequential_taps),
        )
        if self.upsample not in ("bilinear", "nearest"):
            raise ValueError(f"fpn_upsample must be 'bilinear' or 'nearest', got {self.upsample!r}")
        last = conv(1, "fpn_inner4")(feats[3])
        results = [conv(3, "fpn_layer4")(last)]
        for k in (3, 2, 1):
            # QUIRK kept (spec §1.2): bilinear, half-pixel, although the weights come from a nearest-upsampling FPN.
            if self.upsample == "nearest":
                up = jnp.repeat(jnp.repeat(last, 2, axis=1), 2, axis=2)
            else:
                up = upsample(last, (2, 2))
            last = conv(1, f"fpn_inner{k}")(feats[k - 1]) + up
            results.insert(0, conv(3, f"fpn_layer{k}")(last))
        return tuple(results)


class ResNetFPN(nn.Module):
    depth: int = 101
    width: int = 64
    fpn_channels: int = 256
    freeze_at: int = 2
    freeze_all: bool = False
    dtype: jnp.dtype = jnp.float32
    calibrate: bool = False
    remat: bool = False
    conv2d_impl: str = "xla"
    stride_in_1x1: bool = True  # False: torchvision's ResNet (stride in the 3x3)
    fpn_upsample: str = "bilinear"  # "nearest": maskrcnn-benchmark / torchvision FPN

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, ...]:
        # Frozen as a whole: nothing of it is kept for the backward pass, so there is nothing to rematerialise.
        remat = self.remat and not self.freeze_all
        feats = ResNet(
            self.depth, self.width, self.freeze_at, self.dtype, self.calibrate, remat, self.conv2d_impl,
            self.stride_in_1x1, name="body",
        )(images)
        out = FPN(
            self.fpn_channels, self.dtype, self.conv2d_impl, self.fpn_upsample, sequential_taps=remat, name="fpn"
        )(feats)
        if self.freeze_all:
            out = tuple(jax.lax.stop_gradient(o) for o in out)
        return out
