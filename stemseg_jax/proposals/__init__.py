"""Mask R-CNN (ResNet-FPN) per-frame mask proposals for the seed's proposal-based baselines (supp. Sec. III).

``build_maskrcnn(cfg)`` -> ``MaskRCNN`` (Flax Linen, torchvision parameter names), ``init_variables``,
``loss_fn`` (training) and ``detect`` (inference) in ``detect``; the box/anchor/NMS/RoIAlign ops with
torchvision semantics in ``ops``; the losses in ``losses``.
"""

from stemseg_jax.proposals.detect import build_maskrcnn, detect, init_variables, loss_fn
from stemseg_jax.proposals.maskrcnn import MaskRCNN, default_config, tiny_config
from stemseg_jax.proposals.ops import paste_masks

__all__ = [
    "MaskRCNN",
    "build_maskrcnn",
    "default_config",
    "detect",
    "init_variables",
    "loss_fn",
    "paste_masks",
    "tiny_config",
]
