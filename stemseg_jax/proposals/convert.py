"""torchvision ``maskrcnn_resnet50_fpn`` state dict -> ``MaskRCNN`` variables.

Use with ``torchvision_config()`` (ResNet-50, stride in the 3x3, 91 COCO classes incl. background). Inputs
must then be what torchvision's backbone sees (RGB normalised by torchvision's transform), not the
Caffe-style BGR of the maskrcnn-benchmark weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import ml_collections
import numpy as np

from stemseg_jax.proposals.maskrcnn import default_config

_BN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


def torchvision_config(num_classes: int = 91) -> ml_collections.ConfigDict:
    c = default_config()
    c.backbone_depth = 50
    c.stride_in_1x1 = False
    c.num_classes = num_classes
    return c


def _conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _target(name: str, value: np.ndarray, roi_size: int):
    """torch name -> (collection, flax path, converted value), or None for buffers without a counterpart."""
    if name.endswith("num_batches_tracked"):
        return None
    m = re.fullmatch(r"backbone\.body\.(.+)\.(\w+)", name)
    if m:
        module, leaf = m.groups()
        module = re.sub(r"^layer(\d)\.(\d+)\.", r"layer\1_\2.", module)
        module = module.replace("downsample.", "downsample_")
        path = ("backbone", "body") + tuple(("stem." + module if module in ("conv1", "bn1") else module).split("."))
        is_bn = re.search(r"(^|\.)bn\d$|downsample_1$", module) is not None
        if is_bn:
            return "frozen_bn", path + (leaf,), value
        return "params", path + ("kernel",), _conv(value)
    m = re.fullmatch(r"backbone\.fpn\.(inner|layer)_blocks\.(\d)\.0\.(weight|bias)", name)
    if m:
        kind, i, leaf = m.groups()
        path = ("backbone", "fpn", f"fpn_{kind}{int(i) + 1}")
        return ("params", path + ("kernel",), _conv(value)) if leaf == "weight" else ("params", path + ("bias",), value)
    renames = {
        r"rpn\.head\.conv\.0\.0": ("rpn", "head", "conv"),
        r"rpn\.head\.(cls_logits|bbox_pred)": ("rpn", "head", None),
        r"roi_heads\.mask_head\.(\d)\.0": ("roi_heads", "mask_head", "mask_fcn{}"),
        r"roi_heads\.mask_predictor\.(mask_fcn_logits)": ("roi_heads", "mask_predictor", None),
        r"roi_heads\.box_head\.(fc6|fc7)": ("roi_heads", "box_head", None),
        r"roi_heads\.box_predictor\.(cls_score|bbox_pred)": ("roi_heads", "box_predictor", None),
        r"roi_heads\.mask_predictor\.(conv5_mask)": ("roi_heads", "mask_predictor", None),
    }
    for pattern, (a, b, leaf_name) in renames.items():
        m = re.fullmatch(pattern + r"\.(weight|bias)", name)
        if not m:
            continue
        groups = m.groups()
        module = leaf_name.format(int(groups[0]) + 1) if leaf_name and "{}" in leaf_name else (leaf_name or groups[0])
        path = (a, b, module)
        if groups[-1] == "bias":
            return "params", path + ("bias",), value
        if module == "fc6":
            # torch flattens [C, S, S]; the Flax head flattens channels-last [S, S, C].
            out = value.shape[0]
            c = value.shape[1] // (roi_size * roi_size)
            value = value.reshape(out, c, roi_size, roi_size).transpose(2, 3, 1, 0).reshape(-1, out)
        elif module in ("fc7", "cls_score", "bbox_pred"):
            value = value.T
        elif module == "conv5_mask":
            # ConvTranspose2d [in, out, kh, kw]; lax.conv_transpose applies the kernel unflipped.
            value = np.transpose(value, (2, 3, 0, 1))[::-1, ::-1]
        else:
            value = _conv(value)
        return "params", path + ("kernel",), value
    raise ValueError(f"from_torchvision: unexpected state_dict entry {name!r}")


def from_torchvision(state_dict: Mapping, bn_eps: float = 1e-5, roi_size: int = 7) -> dict:
    """A torchvision Mask R-CNN state dict (tensors or arrays) -> ``{"params": ..., "frozen_bn": ...}``.

    BatchNorm ``eps`` (1e-5 in torchvision) is folded into ``running_var`` (the project's FrozenBN has none).
    """
    out: dict = {"params": {}, "frozen_bn": {}}
    for name, tensor in state_dict.items():
        value = np.asarray(tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else tensor)
        target = _target(name, value, roi_size)
        if target is None:
            continue
        collection, path, value = target
        if collection == "frozen_bn" and path[-1] == "running_var":
            value = value + bn_eps
        node = out[collection]
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.ascontiguousarray(value, np.float32)
    return out
