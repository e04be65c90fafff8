"""Mask R-CNN (ResNet-FPN) as Flax Linen modules, with torchvision's structure and parameter names.

Parameter paths map one-to-one onto torchvision's ``maskrcnn_resnet50_fpn`` state dict:
``backbone/body|fpn`` (the project's ``ResNetFPN``), ``rpn/head/{conv,cls_logits,bbox_pred}``,
``roi_heads/box_head/{fc6,fc7}``, ``roi_heads/box_predictor/{cls_score,bbox_pred}``,
``roi_heads/mask_head/mask_fcn1..4``, ``roi_heads/mask_predictor/{conv5_mask,mask_fcn_logits}``.
The modules only map tensors; anchors, proposal selection, RoIAlign, matching and losses are the pure
functions of ``ops``, ``losses`` and ``detect``, which read their settings from the module's fields.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from stemseg_jax.model.backbone import ResNetFPN
from stemseg_jax.model.layers import conv_function


def default_config() -> ml_collections.ConfigDict:
    """ResNet-101-FPN Mask R-CNN with torchvision's / maskrcnn-benchmark's default settings."""
    c = ml_collections.ConfigDict()
    c.backbone_depth = 101
    c.backbone_width = 64
    c.fpn_channels = 256
    c.freeze_at = 2
    # True: stride in the bottleneck's 1x1 (maskrcnn-benchmark's R-101 weights); False: torchvision's weights.
    c.stride_in_1x1 = True
    c.num_classes = 81  # including background (0)
    c.anchor_sizes = (32, 64, 128, 256, 512)  # one per level P2..P6
    c.aspect_ratios = (0.5, 1.0, 2.0)
    c.rpn_channels = 256  # must equal fpn_channels (the head's 3x3 conv keeps the width)
    c.rpn_pre_nms_top_n_train = 2000  # per level
    c.rpn_post_nms_top_n_train = 2000  # per image
    c.rpn_pre_nms_top_n_test = 1000
    c.rpn_post_nms_top_n_test = 1000
    c.rpn_nms_thresh = 0.7
    c.rpn_min_size = 1e-3
    c.rpn_fg_iou_thresh = 0.7
    c.rpn_bg_iou_thresh = 0.3
    c.rpn_batch_size_per_image = 256
    c.rpn_positive_fraction = 0.5
    c.rpn_loss_beta = 1.0 / 9
    c.roi_output_size = 7
    c.mask_roi_output_size = 14
    c.roi_sampling_ratio = 2
    c.representation_size = 1024  # fc6 / fc7
    c.mask_channels = 256  # mask_fcn1..4 and conv5_mask
    c.mask_resolution = 28  # = 2 * mask_roi_output_size (the 2x2 stride-2 transposed conv)
    c.mask_target_sampling_ratio = 2
    c.box_batch_size_per_image = 512
    c.box_positive_fraction = 0.25
    c.box_fg_iou_thresh = 0.5
    c.box_bg_iou_thresh = 0.5
    c.box_weights = (10.0, 10.0, 5.0, 5.0)
    c.box_loss_beta = 1.0 / 9  # torchvision; maskrcnn-benchmark uses 1
    c.box_score_thresh = 0.05
    c.box_nms_thresh = 0.5
    c.box_min_size = 1e-2
    c.detections_per_image = 100
    c.dtype = "float32"
    c.conv2d_impl = "xla"
    c.remat = False
    c.calibrate_bn = False
    return c


def tiny_config(num_classes: int = 3) -> ml_collections.ConfigDict:
    """A Mask R-CNN small enough for a CPU train step at 2x128x128 in seconds (tests, demo)."""
    c = default_config()
    c.backbone_depth = 50
    c.backbone_width = 8
    c.fpn_channels = c.rpn_channels = 32
    c.num_classes = num_classes
    c.representation_size = 64
    c.mask_channels = 32
    c.rpn_pre_nms_top_n_train = 200
    c.rpn_post_nms_top_n_train = 100
    c.rpn_pre_nms_top_n_test = 200
    c.rpn_post_nms_top_n_test = 100
    c.rpn_batch_size_per_image = 64
    c.box_batch_size_per_image = 64
    c.detections_per_image = 20
    return c


class RPNHead(nn.Module):
    """torchvision ``RPNHead``, shared over levels: 3x3 conv + ReLU, objectness 1x1 (A), deltas 1x1 (4A)."""

    channels: int
    num_anchors: int
    dtype: jnp.dtype = jnp.float32
    conv2d_impl: str = "xla"

    def setup(self):
        init = dict(kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros, dtype=self.dtype,
                    conv_general_dilated=conv_function(self.conv2d_impl))
        self.conv = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), **init)
        self.cls_logits = nn.Conv(self.num_anchors, (1, 1), **init)
        self.bbox_pred = nn.Conv(4 * self.num_anchors, (1, 1), **init)

    def __call__(self, features: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
        """Levels ``[N, H_l, W_l, C]`` -> objectness logits ``[N, A_total]``, deltas ``[N, A_total, 4]`` in
        ``ops.generate_anchors`` order (level, position, anchor)."""
        logits, deltas = [], []
        for f in features:
            t = nn.relu(self.conv(f))
            n = f.shape[0]
            logits.append(self.cls_logits(t).reshape(n, -1).astype(jnp.float32))
            deltas.append(self.bbox_pred(t).reshape(n, -1, 4).astype(jnp.float32))
        return jnp.concatenate(logits, axis=1), jnp.concatenate(deltas, axis=1)


class RPN(nn.Module):
    channels: int
    num_anchors: int
    dtype: jnp.dtype = jnp.float32
    conv2d_impl: str = "xla"

    def setup(self):
        self.head = RPNHead(self.channels, self.num_anchors, self.dtype, self.conv2d_impl)

    def __call__(self, features):
        return self.head(features)


# maskrcnn-benchmark's inits (make_fc: kaiming_uniform a=1; predictors: normal 0.01 / 0.001); they train from
# scratch better than torchvision's nn.Linear defaults.
_fc_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
_mask_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class TwoMLPHead(nn.Module):
    representation_size: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        kw = dict(kernel_init=_fc_init, bias_init=nn.initializers.zeros, dtype=self.dtype)
        self.fc6 = nn.Dense(self.representation_size, **kw)
        self.fc7 = nn.Dense(self.representation_size, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[R, S, S, C]`` pooled features (flattened channels-last) -> ``[R, representation_size]``."""
        x = x.reshape(x.shape[0], -1)
        return nn.relu(self.fc7(nn.relu(self.fc6(x))))


class FastRCNNPredictor(nn.Module):
    num_classes: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.cls_score = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype)
        self.bbox_pred = nn.Dense(4 * self.num_classes, kernel_init=nn.initializers.normal(0.001), dtype=self.dtype)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``[R, D]`` -> class logits ``[R, K]``, class-specific deltas ``[R, K, 4]`` (float32)."""
        logits = self.cls_score(x).astype(jnp.float32)
        deltas = self.bbox_pred(x).reshape(x.shape[0], self.num_classes, 4).astype(jnp.float32)
        return logits, deltas


class MaskRCNNHeads(nn.Module):
    channels: int
    dtype: jnp.dtype = jnp.float32
    conv2d_impl: str = "xla"

    def setup(self):
        conv = lambda: nn.Conv(  # noqa: E731
            self.channels, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_mask_init, dtype=self.dtype,
            conv_general_dilated=conv_function(self.conv2d_impl),
        )
        self.mask_fcn1, self.mask_fcn2, self.mask_fcn3, self.mask_fcn4 = conv(), conv(), conv(), conv()

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in (self.mask_fcn1, self.mask_fcn2, self.mask_fcn3, self.mask_fcn4):
            x = nn.relu(layer(x))
        return x


class MaskRCNNPredictor(nn.Module):
    channels: int
    num_classes: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        # kernel [2, 2, C_in, C_out]; lax.conv_transpose does not flip it, torch's ConvTranspose2d does
        # (convert flips when loading torch weights).
        self.conv5_mask = nn.ConvTranspose(self.channels, (2, 2), strides=(2, 2), padding="VALID",
                                           kernel_init=_mask_init, dtype=self.dtype)
        self.mask_fcn_logits = nn.Conv(self.num_classes, (1, 1), kernel_init=_mask_init, dtype=self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.mask_fcn_logits(nn.relu(self.conv5_mask(x))).astype(jnp.float32)


class RoIHeads(nn.Module):
    num_classes: int
    representation_size: int
    mask_channels: int
    dtype: jnp.dtype = jnp.float32
    conv2d_impl: str = "xla"

    def setup(self):
        self.box_head = TwoMLPHead(self.representation_size, self.dtype)
        self.box_predictor = FastRCNNPredictor(self.num_classes, self.dtype)
        self.mask_head = MaskRCNNHeads(self.mask_channels, self.dtype, self.conv2d_impl)
        self.mask_predictor = MaskRCNNPredictor(self.mask_channels, self.num_classes, self.dtype)

    def box(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.box_predictor(self.box_head(pooled.astype(self.dtype)))

    def mask(self, pooled: jax.Array) -> jax.Array:
        return self.mask_predictor(self.mask_head(pooled.astype(self.dtype)))


class MaskRCNN(nn.Module):
    """Mask R-CNN network; the fields are those of ``default_config()`` (see there)."""

    backbone_depth: int = 101
    backbone_width: int = 64
    fpn_channels: int = 256
    freeze_at: int = 2
    stride_in_1x1: bool = True
    num_classes: int = 81
    anchor_sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_channels: int = 256
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 1e-3
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_loss_beta: float = 1.0 / 9
    roi_output_size: int = 7
    mask_roi_output_size: int = 14
    roi_sampling_ratio: int = 2
    representation_size: int = 1024
    mask_channels: int = 256
    mask_resolution: int = 28
    mask_target_sampling_ratio: int = 2
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_loss_beta: float = 1.0 / 9
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_min_size: float = 1e-2
    detections_per_image: int = 100
    dtype: str = "float32"
    conv2d_impl: str = "xla"
    remat: bool = False
    # Data-dependent FrozenBN init for training from scratch (tests, demo): ``init_variables`` with images
    # sets each BN's statistics to its input's batch statistics (see ``model.layers.FrozenBatchNorm``).
    calibrate_bn: bool = False

    # Strides of the RoI levels P2..P5 (P6 only feeds the RPN, as in torchvision).
    roi_scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)

    def setup(self):
        if self.rpn_channels != self.fpn_channels:
            raise ValueError(f"rpn_channels ({self.rpn_channels}) must equal fpn_channels ({self.fpn_channels})")
        if self.mask_resolution != 2 * self.mask_roi_output_size:
            raise ValueError(
                f"mask_resolution ({self.mask_resolution}) must be 2 * mask_roi_output_size "
                f"({self.mask_roi_output_size})"
            )
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per level P2..P6, got {self.anchor_sizes}")
        dtype = jnp.dtype(self.dtype)
        self.backbone = ResNetFPN(
            self.backbone_depth, self.backbone_width, self.fpn_channels, self.freeze_at, False, dtype,
            calibrate=self.calibrate_bn, remat=self.remat, conv2d_impl=self.conv2d_impl,
            stride_in_1x1=self.stride_in_1x1, fpn_upsample="nearest",
        )
        self.rpn = RPN(self.rpn_channels, len(self.aspect_ratios), dtype, self.conv2d_impl)
        self.roi_heads = RoIHeads(self.num_classes, self.representation_size, self.mask_channels, dtype,
                                  self.conv2d_impl)

    def features(self, images: jax.Array) -> tuple[jax.Array, ...]:
        """``[N, H, W, 3]`` mean-subtracted BGR (H, W multiples of 32) -> P2..P6 (P6: max-pool k1 s2 of P5)."""
        if images.ndim != 4 or images.shape[1] % 32 or images.shape[2] % 32:
            raise ValueError(f"images must be [N, H, W, 3] with H, W multiples of 32, got {images.shape}")
        p = self.backbone(images)
        return tuple(p) + (p[-1][:, ::2, ::2],)

    def rpn_forward(self, images: jax.Array):
        """-> (P2..P6, objectness logits ``[N, A]``, deltas ``[N, A, 4]``)."""
        feats = self.features(images)
        logits, deltas = self.rpn(feats)
        return feats, logits, deltas

    def box_forward(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``[R, 7, 7, C]`` -> class logits ``[R, K]``, deltas ``[R, K, 4]``."""
        return self.roi_heads.box(pooled)

    def mask_forward(self, pooled: jax.Array) -> jax.Array:
        """``[R, 14, 14, C]`` -> mask logits ``[R, 28, 28, K]``."""
        return self.roi_heads.mask(pooled)

    def __call__(self, images: jax.Array):
        """Runs every part once (for ``init``) on ``images`` and one dummy RoI per image."""
        feats, logits, deltas = self.rpn_forward(images)
        c = feats[0].shape[-1]
        s, m = self.roi_output_size, self.mask_roi_output_size
        cls, box = self.box_forward(jnp.zeros((images.shape[0], s, s, c), feats[0].dtype))
        masks = self.mask_forward(jnp.zeros((images.shape[0], m, m, c), feats[0].dtype))
        return logits, deltas, cls, box, masks
