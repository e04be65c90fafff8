"""Small PyTorch counterparts of the official STEm-Seg network, written from the spec for parity tests.

Built from stemseg_method.md §1–3 (not copied from the official code); the module attribute names
reproduce the official state-dict keys (``backbone.body.layer1.0.conv1.weight``,
``embedding_head.block_32x.4.weight``, ...) so that their state dicts go through the converter
exactly like a released checkpoint. Everything is NCHW / NCTHW as in PyTorch.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

PIXEL_MEAN_BGR = (102.9801, 115.9465, 122.7717)
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
# clip length -> (pool slots P0..P2, temporal upsampling factors) — spec §2.2
POOL_SCHEDULE = {
    2: ((False, False, False), (1, 1, 1)),
    4: ((True, False, False), (1, 1, 2)),
    8: ((True, True, False), (1, 2, 2)),
    16: ((True, True, True), (2, 2, 2)),
}
# mode -> (coordinate channels, free dims) — spec §3.2
MODES = {"xy": ("yx", 0), "xyt": ("tyx", 0), "xyf": ("yx", 1), "xytf": ("tyx", 1), "xyff": ("yx", 2)}


class FrozenBatchNorm2d(nn.Module):
    """y = x·w/√var + (b − mean·w/√var), ε = 0 (spec §1.1)."""

    def __init__(self, channels: int):
        super().__init__()
        for name, init in (("weight", torch.ones), ("bias", torch.zeros)):
            self.register_buffer(name, init(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x):
        scale = self.weight * self.running_var.rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class Bottleneck(nn.Module):
    """1×1 (stride here) → FBN → ReLU → 3×3 → FBN → ReLU → 1×1 → FBN, + shortcut, ReLU."""

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out_channels)
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), FrozenBatchNorm2d(out_channels)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Stem(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)


class ResNetBody(nn.Module):
    def __init__(self, depth: int = 101, width: int = 64):
        super().__init__()
        self.stem = Stem(width)
        in_channels = width
        for stage, n_blocks in enumerate(STAGE_BLOCKS[depth], start=1):
            w = width * 2 ** (stage - 1)
            blocks = []
            for i in range(n_blocks):
                blocks.append(Bottleneck(in_channels, w, 4 * w, 2 if (i == 0 and stage > 1) else 1))
                in_channels = 4 * w
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
            outs.append(x)
        return outs


class FPN(nn.Module):
    """Lateral 1×1 + output 3×3 convs with bias; bilinear (align_corners=False) top-down upsampling."""

    def __init__(self, in_channels: tuple[int, ...], channels: int = 256):
        super().__init__()
        for k, c in enumerate(in_channels, start=1):
            setattr(self, f"fpn_inner{k}", nn.Conv2d(c, channels, 1))
            setattr(self, f"fpn_layer{k}", nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, feats):
        last = self.fpn_inner4(feats[3])
        results = [self.fpn_layer4(last)]
        for k in (3, 2, 1):
            up = F.interpolate(last, scale_factor=2, mode="bilinear", align_corners=False)
            last = getattr(self, f"fpn_inner{k}")(feats[k - 1]) + up
            results.insert(0, getattr(self, f"fpn_layer{k}")(last))
        return results


def make_backbone(depth: int = 101, width: int = 64, fpn_channels: int = 256) -> nn.Sequential:
    """``Sequential(body=ResNet, fpn=FPN)``: the module of ``mask_rcnn_R_101_FPN_backbone.pth``."""
    fpn_in = tuple(4 * width * 2**k for k in range(4))
    return nn.Sequential(OrderedDict(body=ResNetBody(depth, width), fpn=FPN(fpn_in, fpn_channels)))


def _pool_or_identity(pool: bool) -> nn.Module:
    return nn.AvgPool3d(3, stride=(2, 1, 1), padding=1) if pool else nn.Identity()


class SqueezeExpandDecoder(nn.Module):
    """The 3D decoder of spec §2.3; ``decode`` takes the FPN maps in the order (1/32, 1/16, 1/8, 1/4)."""

    def __init__(self, in_channels: int, inter: tuple[int, ...], num_frames: int, groups: int = 32):
        super().__init__()
        pools, self.t_scales = POOL_SCHEDULE[num_frames]

        def conv_gn_relu(c_in, c_out):
            return [nn.Conv3d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.ReLU()]

        c0, c1, c2, c3 = inter
        self.block_32x = nn.Sequential(
            *conv_gn_relu(in_channels, c0), _pool_or_identity(pools[0]),
            *conv_gn_relu(c0, c0), _pool_or_identity(pools[1]),
            *conv_gn_relu(c0, c0), _pool_or_identity(pools[2]),
        )  # fmt: skip
        self.block_16x = nn.Sequential(
            *conv_gn_relu(in_channels, c1), _pool_or_identity(pools[0]),
            *conv_gn_relu(c1, c1), _pool_or_identity(pools[1]),
        )  # fmt: skip
        self.block_8x = nn.Sequential(*conv_gn_relu(in_channels, c2), _pool_or_identity(pools[0]))
        self.block_4x = nn.Sequential(*conv_gn_relu(in_channels, c3))
        self.conv_16 = nn.Conv3d(c0 + c1, c1, 1, bias=False)
        self.conv_8 = nn.Conv3d(c1 + c2, c2, 1, bias=False)
        self.conv_4 = nn.Conv3d(c2 + c3, c3, 1, bias=False)

    def _up(self, x, tau):
        return F.interpolate(x, scale_factor=(tau, 2, 2), mode="trilinear", align_corners=False)

    def decode(self, feats):
        f32, f16, f8, f4 = feats
        x = self._up(self.block_32x(f32), self.t_scales[0])
        x = self.conv_16(torch.cat([x, self.block_16x(f16)], 1))
        x = self._up(x, self.t_scales[1])
        x = self.conv_8(torch.cat([x, self.block_8x(f8)], 1))
        x = self._up(x, self.t_scales[2])
        return self.conv_4(torch.cat([x, self.block_4x(f4)], 1))

    def forward(self, feats):
        return self.decode(feats)


def coordinate_grid(t: int, h: int, w: int, time_scale: torch.Tensor, coords: str) -> torch.Tensor:
    """``[len(coords), T, h, w]``: per-axis linspace incl. endpoints; short side ±1, time ±time_scale."""
    x_abs, y_abs = max(1.0, w / h), max(1.0, h / w)
    ts = float(time_scale)
    axes = {
        "t": torch.linspace(-ts, ts, t),
        "y": torch.linspace(-y_abs, y_abs, h),
        "x": torch.linspace(-x_abs, x_abs, w),
    }
    gt, gy, gx = torch.meshgrid(axes["t"], axes["y"], axes["x"], indexing="ij")
    grids = {"t": gt, "y": gy, "x": gx}
    return torch.stack([grids[c] for c in coords])


class EmbeddingHead(SqueezeExpandDecoder):
    """Decoder + conv_embedding (tanh(0.25·x) + grid), conv_variance (bias), optional conv_seediness."""

    def __init__(self, in_channels, inter, num_frames, mode: str, with_seediness: bool, groups: int = 32):
        super().__init__(in_channels, inter, num_frames, groups)
        self.coords, self.n_free = MODES[mode]
        self.conv_embedding = nn.Conv3d(inter[3], len(self.coords) + self.n_free, 1, bias=False)
        self.conv_variance = nn.Conv3d(inter[3], len(self.coords), 1, bias=True)
        self.conv_seediness = nn.Conv3d(inter[3], 1, 1, bias=False) if with_seediness else None
        self.register_buffer("time_scale", torch.tensor(1.0))

    def forward(self, feats):
        """Returns (embeddings [N,E,T,h,w], variance logits [N,V,T,h,w], seediness [N,1,T,h,w] or None)."""
        x = self.decode(feats)
        emb = torch.tanh(0.25 * self.conv_embedding(x))
        _, _, t, h, w = emb.shape
        grid = coordinate_grid(t, h, w, self.time_scale, self.coords)
        grid = torch.cat([grid, torch.zeros((self.n_free, t, h, w))])
        emb = emb + grid[None]
        seed = torch.sigmoid(self.conv_seediness(x)) if self.conv_seediness is not None else None
        return emb, self.conv_variance(x), seed


class OutputHead(SqueezeExpandDecoder):
    """Decoder + bias-free conv_out (the seediness and semantic decoders)."""

    def __init__(self, in_channels, inter, num_frames, out_channels: int, groups: int = 32):
        super().__init__(in_channels, inter, num_frames, groups)
        self.conv_out = nn.Conv3d(inter[3], out_channels, 1, bias=False)

    def forward(self, feats):
        return self.conv_out(self.decode(feats))


class LossBuffers(nn.Module):
    """Holds ``free_dim_bandwidths`` [1, n_free] like the official embedding loss module."""

    def __init__(self, free_dim_stds):
        super().__init__()
        self.register_buffer("free_dim_bandwidths", torch.tensor([[1.0 / s**2 for s in free_dim_stds]]))


class STEmSegReference(nn.Module):
    """The whole network from a ``config.model``; ``forward(images [B,T,H,W,3] BGR 0–255)`` returns the
    channels-last output dict of ``stemseg_jax.model.STEmSeg``."""

    def __init__(self, m, num_frames: int):
        super().__init__()
        mode = m.embedding_mode
        self.backbone = make_backbone(m.backbone_depth, m.backbone_width, m.fpn_channels)
        fc, g = m.fpn_channels, m.gn_groups
        separate = m.seediness_head == "separate"
        self.embedding_head = EmbeddingHead(fc, tuple(m.embedding_channels), num_frames, mode, not separate, g)
        self.seediness_head = OutputHead(fc, tuple(m.seediness_channels), num_frames, 1, g) if separate else None
        self.semseg_head = None
        if m.use_semseg_head:
            out = m.num_classes + (1 if m.foreground_channel else 0)
            self.semseg_head = OutputHead(fc, tuple(m.semseg_channels), num_frames, out, g)
        self.embedding_loss_criterion = LossBuffers(m.free_dim_stds) if MODES[mode][1] else None

    def backbone_features(self, images_nhwc):
        x = images_nhwc.permute(0, 3, 1, 2) - torch.tensor(PIXEL_MEAN_BGR)[None, :, None, None]
        return self.backbone.fpn(self.backbone.body(x))

    def forward(self, images):
        b, t, h, w, _ = images.shape
        feats = self.backbone_features(images.reshape(b * t, h, w, 3).float())
        # [B*T, C, h, w] -> [B, C, T, h, w], ordered 1/32 .. 1/4 for the heads
        feats = [f.reshape(b, t, *f.shape[1:]).permute(0, 2, 1, 3, 4) for f in feats][::-1]
        emb, var, seed = self.embedding_head(feats)
        if self.seediness_head is not None:
            seed = torch.sigmoid(self.seediness_head(feats))
        semseg = self.semseg_head(feats) if self.semseg_head is not None else None
        last = lambda x: None if x is None else x.permute(0, 2, 3, 4, 1)  # noqa: E731
        return {
            "embeddings": last(emb),
            "bandwidth_logits": last(var),
            "seediness": last(seed)[..., 0],
            "semseg_logits": last(semseg),
        }


@torch.no_grad()
def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Fills every parameter and buffer with random values that keep activations O(1) through a deep ResNet.

    Conv weights ~ N(0, 1/fan_in); biases, GN affine and FrozenBN statistics random around their
    identity values; ``time_scale`` and ``free_dim_bandwidths`` random too, so that tests notice if they
    are not read from the checkpoint.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=gen)

    def rand(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    for mod in module.modules():
        if isinstance(mod, (nn.Conv2d, nn.Conv3d)):
            fan_in = mod.weight[0].numel()
            mod.weight.copy_(randn(mod.weight.shape) / fan_in**0.5)
            if mod.bias is not None:
                mod.bias.copy_(0.1 * randn(mod.bias.shape))
        elif isinstance(mod, nn.GroupNorm):
            mod.weight.copy_(rand(mod.weight.shape, 0.5, 1.5))
            mod.bias.copy_(0.2 * randn(mod.bias.shape))
        elif isinstance(mod, FrozenBatchNorm2d):
            c = mod.weight.shape
            mod.weight.copy_(rand(c, 0.3, 1.0))
            mod.bias.copy_(0.1 * randn(c))
            mod.running_mean.copy_(0.1 * randn(c))
            mod.running_var.copy_(rand(c, 0.5, 2.0))
        elif isinstance(mod, EmbeddingHead):
            mod.time_scale.fill_(float(rand((), 0.5, 1.5)))
        elif isinstance(mod, LossBuffers):
            mod.free_dim_bandwidths.copy_(rand(mod.free_dim_bandwidths.shape, 5.0, 15.0))
    return module


def state_dict_numpy(module: nn.Module, prefix: str = "") -> dict:
    """The module's state dict as float32 NumPy arrays (what the converter reads from a .pth)."""
    return {prefix + k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def downsample_masks(masks: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """The official target rule (spec §4.1): bilinear, no antialias, then truncation to uint8."""
    shape = masks.shape
    flat = masks.reshape(-1, 1, *shape[-2:]).float()
    small = F.interpolate(flat, scale_factor=1.0 / factor, mode="bilinear", align_corners=False).byte()
    return small.reshape(*shape[:-2], *small.shape[-2:]).bool()


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Berman et al.'s binary Lovász hinge as their reference code computes it (sort, then Jaccard grad)."""
    signs = 2.0 * labels.float() - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, descending=True)
    gt_sorted = labels.float()[perm]
    total = gt_sorted.sum()
    intersection = total - gt_sorted.cumsum(0)
    union = total + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return torch.dot(F.relu(errors_sorted), jaccard)


def stemseg_loss(outputs: dict, batch: dict, config) -> tuple[torch.Tensor, dict]:
    """The STEm-Seg loss the way the official code computes it: one clip and one instance at a time.

    ``outputs`` is ``STEmSegReference.forward``'s dict, ``batch`` the full-resolution batch of the data
    pipeline as torch tensors (``masks [B, I, T, H, W]``, ``instance_valid``, ``category_ids``,
    ``ignore``). Hard semantic targets only (``loss.target_rule = "official"``). Returns ``(total,
    terms)`` with the keys of ``stemseg_jax.losses.stemseg_loss``.
    """
    lo, m = config.loss, config.model
    if lo.target_rule != "official":
        raise ValueError(f"the PyTorch reference loss implements target_rule 'official', not {lo.target_rule!r}")
    emb_all = outputs["embeddings"]
    b_size, t, h, w, _ = emb_all.shape
    factor = batch["masks"].shape[-1] // w
    masks_all = downsample_masks(batch["masks"], factor)
    ignore_all = downsample_masks(batch["ignore"], factor)
    free_bw = [1.0 / s**2 for s in m.free_dim_stds]
    zero = emb_all.new_zeros(())
    sums = {k: zero for k in ("lovasz", "smoothness", "seediness", "semseg", "foreground")}
    for b in range(b_size):
        e = emb_all[b].reshape(-1, emb_all.shape[-1])
        v = outputs["bandwidth_logits"][b].reshape(-1, outputs["bandwidth_logits"].shape[-1])
        s = outputs["seediness"][b].reshape(-1)
        ignore = ignore_all[b].reshape(-1)
        masks = [
            masks_all[b, i].reshape(-1)
            for i in range(masks_all.shape[1])
            if bool(batch["instance_valid"][b, i]) and bool(masks_all[b, i].any())
        ]
        if masks:
            lovasz, smooth, seed = zero, zero, zero
            for mask in masks:
                v_in = v[mask]
                centre = e[mask].mean(0)
                bandwidth = torch.cat([(torch.exp(v_in) * 10.0).mean(0), e.new_tensor(free_bw)])
                prob = torch.exp(-0.5 * torch.sum(bandwidth * (e - centre) ** 2, dim=1))
                lovasz = lovasz + lovasz_hinge_flat(2.0 * prob - 1.0, mask)
                smooth = smooth + torch.mean((v_in.mean(0) - v_in) ** 2)
                seed = seed + torch.mean((s[mask] - prob.detach()[mask]) ** 2)
            background = ~torch.stack(masks).any(0)
            bg = torch.where(ignore[background], zero, s[background] ** 2)
            seed = seed + bg.sum() / max(int(background.sum()), 1)
            sums["lovasz"] = sums["lovasz"] + lovasz / len(masks)
            sums["smoothness"] = sums["smoothness"] + smooth / len(masks)
            sums["seediness"] = sums["seediness"] + seed / (len(masks) + 1)
        if m.use_semseg_head:
            logits = outputs["semseg_logits"][b].reshape(-1, outputs["semseg_logits"].shape[-1])
            target = torch.zeros(e.shape[0], dtype=torch.long)
            for i in range(masks_all.shape[1]):
                if bool(batch["instance_valid"][b, i]):
                    cat = int(batch["category_ids"][b, i])
                    target = torch.where(masks_all[b, i].reshape(-1), target.clamp(min=cat), target)
            ce = F.cross_entropy(logits[:, : m.num_classes], target, reduction="none")
            keep = torch.ones_like(ignore) if lo.semseg_ce_ignore_quirk else ~ignore
            if keep.any():
                sums["semseg"] = sums["semseg"] + ce[keep].mean()
            if m.foreground_channel and (~ignore).any():
                bce = F.binary_cross_entropy_with_logits(logits[:, -1], (target > 0).float(), reduction="none")
                sums["foreground"] = sums["foreground"] + bce[~ignore].mean()
    terms = {k: val / b_size for k, val in sums.items()}
    terms["embedding"] = lo.weight * (
        lo.w_lovasz * terms["lovasz"] + lo.w_smoothness * terms["smoothness"] + lo.w_seediness * terms["seediness"]
    )
    terms["total"] = terms["embedding"] + lo.w_semseg * terms["semseg"] + lo.w_foreground * terms["foreground"]
    return terms["total"], terms


def freeze_like_config(model: STEmSegReference, m) -> STEmSegReference:
    """``requires_grad = False`` on what ``stemseg_jax.model.trainable_mask`` freezes (stem and the first
    ``freeze_at − 1`` stages, or the whole ResNet-FPN with ``freeze_backbone``)."""
    body = model.backbone.body
    frozen = [model.backbone] if m.freeze_backbone else []
    if m.freeze_at >= 1:
        frozen.append(body.stem)
    frozen += [getattr(body, f"layer{k}") for k in range(1, m.freeze_at)]
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    return model
