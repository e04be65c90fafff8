"""The STEm-Seg network: per-frame ResNet-FPN, then 3D decoder heads over the clip (spec §0–3)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from stemseg_jax.config import embedding_dims
from stemseg_jax.model.backbone import ResNetFPN
from stemseg_jax.model.heads import DecoderHead, EmbeddingHead
from stemseg_jax.preprocessing import normalize_images


class STEmSeg(nn.Module):
    """Maps a batch of clips ``[B, T, H, W, 3]`` (BGR, 0–255, H and W multiples of 32) to the head outputs.

    Output dict: ``embeddings [B,T,h,w,E]`` (after the mixing function), ``bandwidth_logits [B,T,h,w,V]``
    (before exp·10), ``seediness [B,T,h,w]`` (after sigmoid), ``semseg_logits [B,T,h,w,C+1]`` or None
    (last channel: foreground logit), with ``h, w = H/4, W/4``. Outputs are float32 whatever ``dtype``.
    """

    embedding_mode: str = "xyt"
    free_dim_stds: tuple[float, ...] = ()
    time_scale: float = 1.0
    backbone_depth: int = 101
    backbone_width: int = 64
    fpn_channels: int = 256
    freeze_at: int = 2
    freeze_backbone: bool = False
    seediness_from: str = "embedding"  # config.model.seediness_head
    embedding_channels: tuple[int, ...] = (256, 256, 128, 128)
    seediness_channels: tuple[int, ...] = (256, 256, 128, 128)
    semseg_channels: tuple[int, ...] = (256, 256, 128, 128)
    use_semseg_head: bool = True
    num_classes: int = 3
    foreground_channel: bool = True
    gn_groups: int = 32
    conv3d_impl: str = "shifted2d"
    conv2d_impl: str = "xla"
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    calibrate_bn: bool = False

    def setup(self):
        _, _, n_free = embedding_dims(self.embedding_mode)
        if len(self.free_dim_stds) != n_free:
            raise ValueError(
                f"model.free_dim_stds has {len(self.free_dim_stds)} values but embedding mode "
                f"{self.embedding_mode!r} has {n_free} free dims"
            )
        if self.seediness_from not in ("embedding", "separate"):
            raise ValueError(f"model.seediness_head must be 'embedding' or 'separate', got {self.seediness_from!r}")
        self.backbone = ResNetFPN(
            self.backbone_depth,
            self.backbone_width,
            self.fpn_channels,
            self.freeze_at,
            self.freeze_backbone,
            self.dtype,
            self.calibrate_bn,
            self.remat,
            self.conv2d_impl,
        )
        common = dict(
            gn_groups=self.gn_groups, conv_impl=self.conv3d_impl, dtype=self.dtype, remat=self.remat,
            conv2d_impl=self.conv2d_impl,
        )
        self.embedding_head = EmbeddingHead(
            self.embedding_mode,
            tuple(self.embedding_channels),
            with_seediness=self.seediness_from == "embedding",
            time_scale=self.time_scale,
            **common,
        )
        if self.seediness_from == "separate":
            self.seediness_head = DecoderHead(1, tuple(self.seediness_channels), **common)
        if self.use_semseg_head:
            out = self.num_classes + (1 if self.foreground_channel else 0)
            self.semseg_head = DecoderHead(out, tuple(self.semseg_channels), **common)
        if n_free:
            bandwidths = jnp.asarray([[1.0 / s**2 for s in self.free_dim_stds]], jnp.float32)
            self.free_dim_bandwidths = self.variable("buffers", "free_dim_bandwidths", lambda: bandwidths)

    def backbone_features(self, images: jax.Array) -> tuple[jax.Array, ...]:
        """``[N, H, W, 3]`` BGR 0–255 -> FPN maps P2..P5, each ``[N, H/s, W/s, fpn_channels]``."""
        shape = images.shape
        if shape[-3] % 32 or shape[-2] % 32:
            raise ValueError(f"image height and width must be multiples of 32 (pad them first), got {shape}")
        return self.backbone(normalize_images(images, jnp))

    def heads(self, features: tuple[jax.Array, ...]) -> dict:
        """FPN maps stacked over time (4 x ``[B, T, H/s, W/s, C]``) -> the output dict."""
        embeddings, variance, seediness = self.embedding_head(features)
        if self.seediness_from == "separate":
            seediness = nn.sigmoid(self.seediness_head(features))[..., 0]
        semseg = self.semseg_head(features) if self.use_semseg_head else None
        return {
            "embeddings": embeddings,
            "bandwidth_logits": variance,
            "seediness": seediness,
            "semseg_logits": semseg,
        }

    def __call__(self, images: jax.Array) -> dict:
        if images.ndim != 5 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape [B, T, H, W, 3], got {images.shape}")
        b, t = images.shape[:2]
        feats = self.backbone_features(images.reshape((b * t,) + images.shape[2:]))
        feats = tuple(f.reshape((b, t) + f.shape[1:]) for f in feats)
        return self.heads(feats)
