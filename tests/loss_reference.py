"""Float64 NumPy references for the STEm-Seg losses, written from the definitions (not the fast forms).

The Lovász hinge is evaluated as the Lovász extension of the Jaccard set function, with the set
function computed from explicit sets; the full loss loops over clips and instances the way the
official code does (spec §4.3-4.5).
"""

from __future__ import annotations

import numpy as np


def jaccard_set_loss(mispredicted: np.ndarray, positives: np.ndarray) -> float:
    """Δ_J(M) = 1 − IoU of the foreground when the pixels in M are predicted wrongly.

    The prediction flips every pixel of M: foreground = (positives \\ M) ∪ (M \\ positives).
    """
    prediction = positives ^ mispredicted
    union = np.sum(prediction | positives)
    if union == 0:
        return 0.0
    return 1.0 - np.sum(prediction & positives) / union


def lovasz_hinge_reference(logits: np.ndarray, labels: np.ndarray) -> float:
    """Lovász extension of Δ_J at the hinge errors max(0, 1 − logit·sign) (Berman et al., Eq. 9)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, bool)
    errors = np.maximum(0.0, 1.0 - logits * np.where(labels, 1.0, -1.0))
    order = np.argsort(-errors, kind="stable")
    total, previous = 0.0, 0.0
    mispredicted = np.zeros(labels.shape, bool)
    for k in order:
        mispredicted[k] = True
        current = jaccard_set_loss(mispredicted, labels)
        total += errors[k] * (current - previous)
        previous = current
    return total


def block_fraction_reference(masks: np.ndarray, factor: int) -> np.ndarray:
    """Share of set pixels in each factor x factor block, by explicit loops over the blocks (float64)."""
    h, w = masks.shape[-2] // factor, masks.shape[-1] // factor
    out = np.zeros(masks.shape[:-2] + (h, w))
    for i in range(h):
        for j in range(w):
            block = masks[..., i * factor : (i + 1) * factor, j * factor : (j + 1) * factor]
            out[..., i, j] = block.mean(axis=(-2, -1))
    return out


def downsample_reference(masks: np.ndarray, factor: int) -> np.ndarray:
    """Half-pixel bilinear resampling by 1/factor in float64, then truncation to an integer (as uint8)."""
    m = np.asarray(masks, np.float64)

    def resample(x: np.ndarray, axis: int) -> np.ndarray:
        size = x.shape[axis]
        out = size // factor
        src = np.maximum((np.arange(out) + 0.5) * factor - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, size - 1)
        lam = src - i0
        shape = [1] * x.ndim
        shape[axis] = out
        lam = lam.reshape(shape)
        return np.take(x, i0, axis=axis) * (1 - lam) + np.take(x, i1, axis=axis) * lam

    out = resample(resample(m, m.ndim - 2), m.ndim - 1)
    return np.trunc(out + 1e-12).astype(np.uint8).astype(bool)


def stemseg_loss_reference(outputs: dict, targets: dict, config) -> dict[str, float]:
    """Per-clip, per-instance loop following the official loss; per-clip terms averaged over clips."""
    e_all = np.asarray(outputs["embeddings"], np.float64)
    v_all = np.asarray(outputs["bandwidth_logits"], np.float64)
    s_all = np.asarray(outputs["seediness"], np.float64)
    masks_all = np.asarray(targets["masks"], bool)
    valid_all = np.asarray(targets["instance_valid"], bool)
    ignore_all = np.asarray(targets["ignore"], bool)
    cats_all = np.asarray(targets["category_ids"])
    free_bw = [1.0 / s**2 for s in config.model.free_dim_stds]
    lo = config.loss
    sums = dict(lovasz=0.0, smoothness=0.0, seediness=0.0, semseg=0.0, foreground=0.0)
    num_clips = e_all.shape[0]
    for b in range(num_clips):
        e = e_all[b].reshape(-1, e_all.shape[-1])
        v = v_all[b].reshape(-1, v_all.shape[-1])
        s = s_all[b].reshape(-1)
        ignore = ignore_all[b].reshape(-1)
        instances = [
            masks_all[b, i].reshape(-1) for i in range(masks_all.shape[1]) if valid_all[b, i] and masks_all[b, i].any()
        ]
        if instances:
            lovasz, smooth, seed = 0.0, 0.0, 0.0
            for mask in instances:
                centre = e[mask].mean(axis=0)
                bandwidth = np.concatenate([(np.exp(v[mask]) * 10.0).mean(axis=0), free_bw])
                prob = np.exp(-0.5 * np.sum(bandwidth * (e - centre) ** 2, axis=1))
                lovasz += lovasz_hinge_reference(2 * prob - 1, mask)
                smooth += np.mean((v[mask].mean(axis=0) - v[mask]) ** 2)
                seed += np.mean((s[mask] - prob[mask]) ** 2)
            background = ~np.any(instances, axis=0)
            seed += np.sum(np.where(ignore[background], 0.0, s[background] ** 2)) / max(background.sum(), 1)
            sums["lovasz"] += lovasz / len(instances)
            sums["smoothness"] += smooth / len(instances)
            sums["seediness"] += seed / (len(instances) + 1)
        if config.model.use_semseg_head:
            logits = np.asarray(outputs["semseg_logits"][b], np.float64).reshape(-1, outputs["semseg_logits"].shape[-1])
            target = np.zeros(e.shape[0], int)
            for i in range(masks_all.shape[1]):
                if valid_all[b, i]:
                    target = np.where(masks_all[b, i].reshape(-1), np.maximum(target, cats_all[b, i]), target)
            c = config.model.num_classes
            cls = logits[:, :c]
            log_z = np.log(np.sum(np.exp(cls - cls.max(axis=1, keepdims=True)), axis=1)) + cls.max(axis=1)
            if "class_fractions" in targets:  # soft targets: -sum_c q_c log p_c, foreground share 1 - q_0
                shares = np.asarray(targets["class_fractions"][b], np.float64).reshape(-1, c)
                ce = np.sum(shares * (log_z[:, None] - cls), axis=1)
                target_fg = 1.0 - shares[:, 0]
            else:
                ce = log_z - cls[np.arange(len(target)), target]
                target_fg = (target > 0).astype(np.float64)
            if lo.semseg_ce_ignore_quirk:
                sums["semseg"] += ce.mean()
            elif (~ignore).any():
                sums["semseg"] += ce[~ignore].mean()
            if config.model.foreground_channel and (~ignore).any():
                x = logits[:, -1]
                y = target_fg
                bce = -(y * np.log(1 / (1 + np.exp(-x))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-x))))
                sums["foreground"] += bce[~ignore].mean()
    terms = {k: val / num_clips for k, val in sums.items()}
    terms["embedding"] = lo.weight * (
        lo.w_lovasz * terms["lovasz"] + lo.w_smoothness * terms["smoothness"] + lo.w_seediness * terms["seediness"]
    )
    terms["total"] = terms["embedding"] + lo.w_semseg * terms["semseg"] + lo.w_foreground * terms["foreground"]
    return terms
