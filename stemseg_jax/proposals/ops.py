"""Box, anchor, NMS, RoIAlign and matching ops of Mask R-CNN with torchvision semantics, in fixed shapes.

Everything except ``paste_masks`` is pure ``jax.numpy``: shapes depend only on static arguments, so the
ops jit and vmap. Boxes are ``[..., 4]`` xyxy in pixels of the map they refer to. Where torchvision
deletes elements (``remove_small_boxes``, ``nms`` keep lists, samplers) these return boolean masks or
fixed-length index arrays with a validity mask instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

# torchvision's BoxCoder clamp of dw, dh before exp (``math.log(1000.0 / 16)``).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


# ----------------------------------------------------------------------------------------------- anchors
def generate_anchors(
    feature_hw: Sequence[tuple[int, int]],
    strides: Sequence[int | tuple[int, int]],
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
) -> jax.Array:
    """Anchors of all FPN levels as torchvision's ``AnchorGenerator`` (one size per level) -> ``[A, 4]``.

    ``strides``: per level an int or ``(stride_y, stride_x)``; torchvision uses ``image_size // map_size``
    (``anchor_strides`` gives these), which is not the nominal stride where a map was rounded up (P6).

    Order: level, then position (row-major over ``[H_l, W_l]``), then anchor (aspect ratio). Base anchors
    are ``round([-w, -h, w, h] / 2)`` with ``h = size * sqrt(ratio)``, ``w = size / sqrt(ratio)``, shifted
    by ``(x * stride, y * stride)``; computed in float32 NumPy as torchvision does (static for given sizes).
    """
    if not (len(feature_hw) == len(strides) == len(sizes)):
        raise ValueError(
            f"feature_hw, strides and sizes need one entry per level, got {len(feature_hw)}, {len(strides)}, "
            f"{len(sizes)}"
        )
    ratios = np.asarray(aspect_ratios, np.float32)
    out = []
    for (h, w), stride, size in zip(feature_hw, strides, sizes):
        h_ratios = np.sqrt(ratios)
        w_ratios = np.float32(1.0) / h_ratios
        ws = w_ratios * np.float32(size)
        hs = h_ratios * np.float32(size)
        base = np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2.0)).astype(np.float32)
        stride_y, stride_x = (stride, stride) if np.isscalar(stride) else stride
        sx = np.arange(w, dtype=np.float32) * np.float32(stride_x)
        sy = np.arange(h, dtype=np.float32) * np.float32(stride_y)
        yy, xx = np.meshgrid(sy, sx, indexing="ij")
        shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
        out.append((shifts + base[None]).reshape(-1, 4))
    return jnp.asarray(np.concatenate(out, axis=0))


def anchor_strides(image_hw: tuple[int, int], feature_hw: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """torchvision's per-level anchor strides ``(H // h, W // w)`` for a padded input of ``image_hw``."""
    return [(image_hw[0] // h, image_hw[1] // w) for h, w in feature_hw]


# --------------------------------------------------------------------------------------------- box coding
def encode_boxes(gt: jax.Array, anchors: jax.Array, weights: Sequence[float]) -> jax.Array:
    """torchvision ``BoxCoder.encode_single``: ``[..., 4]`` targets of ``gt`` relative to ``anchors``."""
    wx, wy, ww, wh = weights
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    gw = gt[..., 2] - gt[..., 0]
    gh = gt[..., 3] - gt[..., 1]
    gx = gt[..., 0] + 0.5 * gw
    gy = gt[..., 1] + 0.5 * gh
    return jnp.stack(
        [wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * jnp.log(gw / aw), wh * jnp.log(gh / ah)], axis=-1
    )


def decode_boxes(
    deltas: jax.Array, anchors: jax.Array, weights: Sequence[float], clip: float = BBOX_XFORM_CLIP
) -> jax.Array:
    """torchvision ``BoxCoder.decode_single`` (no +1): ``deltas [..., 4]`` on ``anchors [..., 4]`` -> boxes."""
    wx, wy, ww, wh = weights
    anchors = anchors.astype(deltas.dtype)
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = jnp.minimum(deltas[..., 2] / ww, clip)
    dh = jnp.minimum(deltas[..., 3] / wh, clip)
    cx = dx * aw + ax
    cy = dy * ah + ay
    half_w = 0.5 * (jnp.exp(dw) * aw)
    half_h = 0.5 * (jnp.exp(dh) * ah)
    return jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


# ------------------------------------------------------------------------------------------ box utilities
def box_area(boxes: jax.Array) -> jax.Array:
    """``[..., 4]`` -> ``[...]``, ``(x2 - x1) * (y2 - y1)`` (torchvision, no +1)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """torchvision ``box_iou``: ``a [N, 4]``, ``b [M, 4]`` -> ``[N, M]``."""
    lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
    rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def clip_boxes(boxes: jax.Array, hw) -> jax.Array:
    """torchvision ``clip_boxes_to_image``: x into ``[0, W]``, y into ``[0, H]``; ``hw`` may be traced."""
    h = jnp.asarray(hw[0], boxes.dtype)
    w = jnp.asarray(hw[1], boxes.dtype)
    x = jnp.clip(boxes[..., 0::2], 0.0, w)
    y = jnp.clip(boxes[..., 1::2], 0.0, h)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def remove_small(boxes: jax.Array, min_size: float) -> jax.Array:
    """torchvision ``remove_small_boxes`` as a keep mask ``[...]``: width and height ``>= min_size``."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


# ---------------------------------------------------------------------------------------------------- NMS
def _iou_row(box: jax.Array, boxes: jax.Array, areas: jax.Array) -> jax.Array:
    """IoU of one box ``[4]`` with ``boxes [N, 4]`` in torchvision's NMS arithmetic."""
    xx1 = jnp.maximum(box[0], boxes[:, 0])
    yy1 = jnp.maximum(box[1], boxes[:, 1])
    xx2 = jnp.minimum(box[2], boxes[:, 2])
    yy2 = jnp.minimum(box[3], boxes[:, 3])
    inter = jnp.maximum(xx2 - xx1, 0.0) * jnp.maximum(yy2 - yy1, 0.0)
    return inter / (box_area(box) + areas - inter)


# Above this many boxes NMS runs one argmax step per kept box instead of on the N x N suppression matrix.
_MATRIX_NMS_MAX_BOXES = 4096


def _nms_argmax(boxes, scores, iou_threshold, max_output, valid, groups):
    """Greedy NMS by repeated argmax: min(kept, max_output) steps of O(N), no N x N matrix."""
    areas = box_area(boxes)
    neg_inf = jnp.array(-jnp.inf, scores.dtype)

    def cond(state):
        i, remaining, _ = state
        return (i < max_output) & jnp.any(remaining)

    def body(state):
        i, remaining, keep = state
        best = jnp.argmax(jnp.where(remaining, scores, neg_inf))
        overlap = _iou_row(boxes[best], boxes, areas) > iou_threshold
        if groups is not None:
            overlap = overlap & (groups == groups[best])
        remaining = remaining & ~overlap
        remaining = remaining.at[best].set(False)
        return i + 1, remaining, keep.at[i].set(best.astype(jnp.int32))

    keep0 = jnp.zeros((max_output,), jnp.int32)
    count, _, keep = jax.lax.while_loop(cond, body, (jnp.int32(0), valid, keep0))
    keep_valid = jnp.arange(max_output) < count
    return jnp.where(keep_valid, keep, 0), keep_valid


def _nms_matrix(boxes, scores, iou_threshold, max_output, valid, groups):
    """Greedy NMS as a fixed point over the score-sorted suppression matrix.

    ``keep[j] = valid[j] and no kept i before j overlaps j`` is solved by Jacobi iteration from
    ``keep = valid``; position j is final once every position before it is, so the iteration reaches the
    greedy result after (longest suppression chain) steps, typically a handful, each one parallel
    matrix-vector product instead of one sequential step per kept box.
    """
    n = boxes.shape[0]
    order = jnp.argsort(-jnp.where(valid, scores, -jnp.inf), stable=True)
    b = boxes[order]
    v = valid[order]
    areas = box_area(b)
    xx1 = jnp.maximum(b[:, None, 0], b[None, :, 0])
    yy1 = jnp.maximum(b[:, None, 1], b[None, :, 1])
    xx2 = jnp.minimum(b[:, None, 2], b[None, :, 2])
    yy2 = jnp.minimum(b[:, None, 3], b[None, :, 3])
    inter = jnp.maximum(xx2 - xx1, 0.0) * jnp.maximum(yy2 - yy1, 0.0)
    over = inter / (areas[:, None] + areas[None, :] - inter) > iou_threshold
    if groups is not None:
        g = groups[order]
        over = over & (g[:, None] == g[None, :])
    idx = jnp.arange(n)
    suppresses = over & (idx[:, None] < idx[None, :]) & v[:, None]

    def body(state):
        keep, _ = state
        new = v & ~jnp.any(suppresses & keep[:, None], axis=0)
        return new, jnp.any(new != keep)

    keep, _ = jax.lax.while_loop(lambda s: s[1], body, (v, jnp.bool_(True)))
    first = jnp.nonzero(keep, size=max_output, fill_value=0)[0]
    keep_valid = jnp.arange(max_output) < keep.sum()
    return jnp.where(keep_valid, order[first], 0).astype(jnp.int32), keep_valid


def _greedy_nms(
    boxes: jax.Array, scores: jax.Array, iou_threshold: float, max_output: int, valid, groups, method: str
) -> tuple[jax.Array, jax.Array]:
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms needs boxes [N, 4] and scores [N], got {boxes.shape} and {scores.shape}")
    n = boxes.shape[0]
    valid = jnp.ones((n,), bool) if valid is None else valid.astype(bool)
    if method == "auto":
        method = "matrix" if n <= _MATRIX_NMS_MAX_BOXES else "argmax"
    impls = {"matrix": _nms_matrix, "argmax": _nms_argmax}
    if method not in impls:
        raise ValueError(f"nms method must be 'auto', 'matrix' or 'argmax', got {method!r}")
    return impls[method](boxes, scores, iou_threshold, max_output, valid, groups)


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    iou_threshold: float,
    max_output: int,
    valid: jax.Array | None = None,
    method: str = "auto",
) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS as ``torchvision.ops.nms`` (suppress IoU ``>`` threshold), first ``max_output`` kept.

    ``boxes [N, 4]``, ``scores [N]``, ``valid [N]`` (invalid boxes neither kept nor suppressing) ->
    ``(keep_idx [max_output] int32, keep_valid [max_output] bool)``: indices in decreasing score order,
    padded with 0 where ``keep_valid`` is False. Score ties go to the lower index. ``method``: "matrix"
    (parallel, N x N memory), "argmax" (one step per kept box) or "auto" (matrix up to 4096 boxes).
    """
    return _greedy_nms(boxes, scores, iou_threshold, max_output, valid, None, method)


def batched_nms(
    boxes: jax.Array,
    scores: jax.Array,
    idxs: jax.Array,
    iou_threshold: float,
    max_output: int,
    valid: jax.Array | None = None,
    method: str = "auto",
) -> tuple[jax.Array, jax.Array]:
    """``torchvision.ops.batched_nms``: NMS within each category ``idxs [N]``; outputs as ``nms``.

    torchvision offsets each category's boxes so that they cannot overlap (or loops over categories); here
    suppression is masked to equal categories, the same result without the offset's float32 rounding.
    """
    return _greedy_nms(boxes, scores, iou_threshold, max_output, valid, idxs, method)


# ----------------------------------------------------------------------------------------------- RoIAlign
def _axis_samples(start, bin_size, n_bins: int, sampling_ratio: int, size):
    """Per-RoI sample coordinates along one axis -> (low idx, high idx, low weight, high weight), each
    ``[R, n_bins * sampling_ratio]``, with torchvision's ``bilinear_interpolate`` border rules."""
    bins = jnp.arange(n_bins, dtype=start.dtype)
    sub = (jnp.arange(sampling_ratio, dtype=start.dtype) + 0.5) / sampling_ratio
    offs = (bins[:, None] + sub[None, :]).reshape(-1)
    # torchvision: start + p * bin + (i + .5) * bin / grid; the same sum in another order.
    pos = start[:, None] + offs[None, :] * bin_size[:, None]
    size = size.astype(start.dtype)[:, None]
    inside = (pos >= -1.0) & (pos <= size)
    pos = jnp.maximum(pos, 0.0)
    low = jnp.floor(pos)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    pos = jnp.where(at_end, low, pos)
    frac = pos - low
    w_low = jnp.where(inside, 1.0 - frac, 0.0)
    w_high = jnp.where(inside, frac, 0.0)
    return low.astype(jnp.int32), high.astype(jnp.int32), w_low, w_high


def _roi_align_flat(
    flat: jax.Array,
    offsets: jax.Array,
    heights: jax.Array,
    widths: jax.Array,
    scales: jax.Array,
    boxes: jax.Array,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> jax.Array:
    """RoIAlign of RoI ``r`` on the ``[heights[r], widths[r], C]`` map stored row-major at
    ``flat[offsets[r]:]`` (``flat [P, C]``) -> ``[R, ph, pw, C]``. One gather per bilinear corner."""
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be positive (adaptive sampling is not supported), got {sampling_ratio}")
    ph, pw = output_size
    dtype = flat.dtype
    boxes = boxes.astype(dtype)
    scales = scales.astype(dtype)
    off = 0.5 if aligned else 0.0
    x1 = boxes[:, 0] * scales - off
    y1 = boxes[:, 1] * scales - off
    roi_w = boxes[:, 2] * scales - off - x1
    roi_h = boxes[:, 3] * scales - off - y1
    if not aligned:
        roi_w = jnp.maximum(roi_w, 1.0)
        roi_h = jnp.maximum(roi_h, 1.0)
    ylo, yhi, wylo, wyhi = _axis_samples(y1, roi_h / ph, ph, sampling_ratio, heights)
    xlo, xhi, wxlo, wxhi = _axis_samples(x1, roi_w / pw, pw, sampling_ratio, widths)
    base = offsets.astype(jnp.int32)[:, None, None]
    row_stride = widths.astype(jnp.int32)[:, None, None]
    out = 0.0
    for yi, wy in ((ylo, wylo), (yhi, wyhi)):
        for xi, wx in ((xlo, wxlo), (xhi, wxhi)):
            idx = base + yi[:, :, None] * row_stride + xi[:, None, :]
            weight = wy[:, :, None] * wx[:, None, :]
            out = out + flat[idx] * weight[..., None]
    r, c = boxes.shape[0], flat.shape[-1]
    out = out.reshape(r, ph, sampling_ratio, pw, sampling_ratio, c)
    return out.mean(axis=(2, 4))


def roi_align(
    features: jax.Array,
    boxes: jax.Array,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> jax.Array:
    """``torchvision.ops.roi_align`` for one image: ``features [H, W, C]``, ``boxes [R, 4]`` (input-image
    xyxy) -> ``[R, ph, pw, C]``.

    Same sample positions, border handling (samples beyond one pixel outside count as 0, others clamp)
    and ``aligned`` half-pixel offset as torchvision; only a fixed ``sampling_ratio > 0`` is supported
    (torchvision's adaptive ``ceil(roi_size / output_size)`` grid has data-dependent size).
    """
    h, w, _ = features.shape
    r = boxes.shape[0]
    full = lambda v: jnp.full((r,), v)  # noqa: E731
    return _roi_align_flat(
        features.reshape(h * w, -1), full(0), full(h), full(w), full(spatial_scale), boxes,
        tuple(output_size), sampling_ratio, aligned,
    )


def roi_levels(
    boxes: jax.Array, scales: Sequence[float], canonical_scale: float = 224, canonical_level: int = 4,
    eps: float = 1e-6,
) -> jax.Array:
    """torchvision ``LevelMapper``: FPN level index (0 = finest of ``scales``) per box ``[R]`` int32."""
    k_min = int(round(-math.log2(scales[0])))
    k_max = int(round(-math.log2(scales[-1])))
    s = jnp.sqrt(jnp.maximum(box_area(boxes), 0.0))
    lvl = jnp.floor(canonical_level + jnp.log2(s / canonical_scale) + eps)
    return (jnp.clip(lvl, k_min, k_max) - k_min).astype(jnp.int32)


def multilevel_roi_align(
    features: Sequence[jax.Array],
    boxes: jax.Array,
    output_size: tuple[int, int],
    scales: Sequence[float],
    sampling_ratio: int = 2,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    aligned: bool = False,
) -> jax.Array:
    """``torchvision.ops.MultiScaleRoIAlign`` for one image: ``features`` = levels ``[H_l, W_l, C]`` with
    ``scales`` (e.g. 1/4 .. 1/32), ``boxes [R, 4]`` -> ``[R, ph, pw, C]``.

    Each box is pooled from its ``roi_levels`` level only (all levels are flattened into one array, so the
    cost is that of a single RoIAlign). ``aligned=False`` as torchvision's Mask R-CNN.
    """
    if len(features) != len(scales):
        raise ValueError(f"need one scale per feature level, got {len(features)} levels and {len(scales)} scales")
    lvl = roi_levels(boxes, scales, canonical_scale, canonical_level)
    hs = np.array([f.shape[0] for f in features])
    ws = np.array([f.shape[1] for f in features])
    starts = np.concatenate([[0], np.cumsum(hs * ws)[:-1]])
    flat = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in features], axis=0)
    pick = lambda table: jnp.asarray(table)[lvl]  # noqa: E731
    return _roi_align_flat(
        flat, pick(starts), pick(hs), pick(ws), pick(np.asarray(scales, np.float64)), boxes, tuple(output_size),
        sampling_ratio, aligned,
    )


def crop_masks(
    masks: jax.Array, boxes: jax.Array, mask_idx: jax.Array, resolution: int, sampling_ratio: int = 2
) -> jax.Array:
    """Mask targets as torchvision's ``project_masks_on_boxes``: RoIAlign (``aligned=False``, scale 1) of
    ``masks [G, H, W]`` channel ``mask_idx [R]`` in ``boxes [R, 4]`` -> ``[R, M, M]`` float (soft).

    torchvision uses the adaptive grid (about one sample per pixel); the fixed ``sampling_ratio`` here is
    what a static shape allows."""
    g, h, w = masks.shape
    r = boxes.shape[0]
    flat = masks.reshape(g * h * w, 1).astype(jnp.float32)
    full = lambda v: jnp.full((r,), v)  # noqa: E731
    out = _roi_align_flat(
        flat, mask_idx.astype(jnp.int32) * (h * w), full(h), full(w), full(1.0), boxes, (resolution, resolution),
        sampling_ratio, False,
    )
    return out[..., 0]


# --------------------------------------------------------------------------------------- matching/sampling
def match(
    iou: jax.Array, high: float, low: float, allow_low_quality: bool, gt_valid: jax.Array | None = None
) -> jax.Array:
    """torchvision ``Matcher``: ``iou [G, A]`` -> ``matched_idx [A]`` int32: the best gt, -1 below ``low``,
    -2 in ``[low, high)``.

    With ``allow_low_quality`` every anchor that ties a gt's best IoU keeps its best gt (torchvision's
    ``set_low_quality_matches_``, including gts whose best IoU is 0). ``gt_valid [G]`` drops padding gts;
    with no valid gt every anchor is -1.
    """
    if gt_valid is None:
        gt_valid = jnp.ones(iou.shape[:1], bool)
    iou = jnp.where(gt_valid[:, None], iou, -1.0)
    matched_vals = iou.max(axis=0)
    best = iou.argmax(axis=0).astype(jnp.int32)
    matches = jnp.where(matched_vals < low, -1, jnp.where(matched_vals < high, -2, best))
    if allow_low_quality:
        best_per_gt = iou.max(axis=1, keepdims=True)
        ties = ((iou == best_per_gt) & gt_valid[:, None]).any(axis=0)
        matches = jnp.where(ties, best, matches)
    return matches.astype(jnp.int32)


def _choose(key: jax.Array, candidates: jax.Array, count: jax.Array) -> jax.Array:
    """A uniformly random subset of ``count`` of the True entries of ``candidates [A]`` (as a mask)."""
    u = jax.random.uniform(key, candidates.shape)
    u = jnp.where(candidates, u, 2.0)
    # The count-th smallest key of the candidates is the cut; keys are distinct almost surely.
    cut = jnp.sort(u)[jnp.clip(count - 1, 0, u.shape[0] - 1)]
    return candidates & (u <= cut) & (count > 0)


def sample_balanced(
    key: jax.Array, labels: jax.Array, num: int, positive_fraction: float
) -> tuple[jax.Array, jax.Array]:
    """torchvision ``BalancedPositiveNegativeSampler`` for one image: ``labels [A]`` (>= 1 positive, 0
    negative, -1 ignore) -> ``(pos_mask [A], neg_mask [A])`` with at most ``int(num * positive_fraction)``
    random positives and ``num`` minus that many random negatives."""
    pos = labels >= 1
    neg = labels == 0
    num_pos = jnp.minimum(pos.sum(), int(num * positive_fraction))
    num_neg = jnp.minimum(neg.sum(), num - num_pos)
    k_pos, k_neg = jax.random.split(key)
    return _choose(k_pos, pos, num_pos), _choose(k_neg, neg, num_neg)


# ------------------------------------------------------------------------------------------- mask pasting
def paste_masks(
    masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int], threshold: float | None = 0.5, padding: int = 1
) -> np.ndarray:
    """torchvision ``paste_masks_in_image`` in NumPy/OpenCV: ``masks [D, M, M]`` probabilities in ``boxes
    [D, 4]`` -> ``[D, H, W]`` bool (``> threshold``), or the float32 probabilities with ``threshold=None``.

    Each mask is zero-padded by ``padding``, its box scaled by ``(M + 2 padding) / M`` about the centre and
    truncated to integers, the mask resized bilinearly (half-pixel, no antialias) to ``box + 1`` pixels.
    """
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float32)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"paste_masks needs masks [D, M, M] and boxes [D, 4], got {masks.shape} and {boxes.shape}")
    im_h, im_w = int(image_hw[0]), int(image_hw[1])
    d, m, _ = masks.shape
    scale = np.float32((m + 2 * padding) / m)
    padded = np.pad(masks, ((0, 0), (padding, padding), (padding, padding)))
    half_w = (boxes[:, 2] - boxes[:, 0]) * np.float32(0.5) * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * np.float32(0.5) * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * np.float32(0.5)
    cy = (boxes[:, 3] + boxes[:, 1]) * np.float32(0.5)
    expanded = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    expanded = np.trunc(expanded).astype(np.int64)
    out = np.zeros((d, im_h, im_w), np.float32)
    for i in range(d):
        x0, y0, x1, y1 = (int(v) for v in expanded[i])
        w = max(x1 - x0 + 1, 1)
        h = max(y1 - y0 + 1, 1)
        resized = cv2.resize(padded[i], (w, h), interpolation=cv2.INTER_LINEAR)
        xa, xb = max(x0, 0), min(x1 + 1, im_w)
        ya, yb = max(y0, 0), min(y1 + 1, im_h)
        if xb > xa and yb > ya:
            out[i, ya:yb, xa:xb] = resized[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return out if threshold is None else out > threshold
