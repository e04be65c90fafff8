"""Dense optical flow between consecutive frames, and warping masks with it.

One interface, ``FlowFn(prev_bgr [H, W, 3] uint8, next_bgr [H, W, 3] uint8) -> flow [H, W, 2] float32``,
with ``flow[y, x] = (dx, dy)``: the pixel ``(x, y)`` of ``prev`` is at ``(x + dx, y + dy)`` in ``next``.
The seed used PWC-Net (supplementary Sec. III); here classical OpenCV flows on grey frames stand in
(``FLOWS``), and any learned flow with the same signature plugs in.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _grey_pair(prev_bgr: np.ndarray, next_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prev_bgr, next_bgr = np.asarray(prev_bgr), np.asarray(next_bgr)
    for name, f in (("prev", prev_bgr), ("next", next_bgr)):
        if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise ValueError(f"optical flow: {name} frame must be [H, W, 3] uint8 BGR, got {f.shape} {f.dtype}")
    if prev_bgr.shape != next_bgr.shape:
        raise ValueError(f"optical flow: frames differ in size, {prev_bgr.shape} vs {next_bgr.shape}")
    return cv2.cvtColor(prev_bgr, cv2.COLOR_BGR2GRAY), cv2.cvtColor(next_bgr, cv2.COLOR_BGR2GRAY)


def dis_flow(prev_bgr: np.ndarray, next_bgr: np.ndarray) -> np.ndarray:
    """OpenCV DIS flow (preset MEDIUM), ``[H, W, 2] float32``. A new instance per call: no state between
    videos (DIS keeps none across calls unless told to)."""
    a, b = _grey_pair(prev_bgr, next_bgr)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return np.asarray(dis.calc(a, b, None), np.float32)


def farneback_flow(prev_bgr: np.ndarray, next_bgr: np.ndarray) -> np.ndarray:
    """OpenCV Farnebäck flow, ``[H, W, 2] float32`` (5 pyramid levels for motions of tens of pixels)."""
    a, b = _grey_pair(prev_bgr, next_bgr)
    flow = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=5, winsize=15, iterations=3, poly_n=5,
                                        poly_sigma=1.2, flags=0)
    return np.asarray(flow, np.float32)


FLOWS: dict[str, FlowFn] = {"dis": dis_flow, "farneback": farneback_flow}


def get_flow(name: str) -> FlowFn:
    """The flow function ``name`` names; an unknown name is an error listing ``FLOWS``."""
    if name not in FLOWS:
        raise ValueError(f"unknown optical flow {name!r}; expected one of {sorted(FLOWS)}")
    return FLOWS[name]


def warp_masks(masks_next: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Masks of frame i+1 brought onto frame i with the flow i -> i+1: ``[n, H, W] bool`` -> ``[n, H, W] bool``.

    Pixel ``p`` of frame i takes ``mask_{i+1}(p + flow(p))``, sampled bilinearly (``cv2.remap``; outside the
    frame counts as background) and thresholded at 0.5.
    """
    masks_next = np.asarray(masks_next)
    flow = np.asarray(flow, np.float32)
    if masks_next.ndim != 3:
        raise ValueError(f"warp_masks: masks must be [n, H, W], got shape {masks_next.shape}")
    n, h, w = masks_next.shape
    if flow.shape != (h, w, 2):
        raise ValueError(f"warp_masks: flow of shape {flow.shape} does not match masks of size {(h, w)}")
    out = np.zeros((n, h, w), bool)
    if n == 0:
        return out
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = xs + flow[..., 0]
    map_y = ys + flow[..., 1]
    src = masks_next.astype(np.float32)
    # remap takes up to 4 channels per call: masks go in groups of 4 as channels of one image.
    for start in range(0, n, 4):
        group = np.ascontiguousarray(src[start:start + 4].transpose(1, 2, 0))
        warped = cv2.remap(group, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        warped = warped.reshape(h, w, -1)
        out[start:start + 4] = warped.transpose(2, 0, 1) >= 0.5
    return out


__all__ = ["FLOWS", "FlowFn", "dis_flow", "farneback_flow", "get_flow", "warp_masks"]
