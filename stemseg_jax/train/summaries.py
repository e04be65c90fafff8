"""Image summaries of a training clip: the frame, its seediness map and its clustered instances."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from stemseg_jax.inference.clustering import cluster_clip, clustering_options, free_dim_bandwidths
from stemseg_jax.model.outputs import bandwidths, foreground_mask

PALETTE = np.random.default_rng(3).integers(64, 256, size=(256, 3)).astype(np.uint8)


def clip_summary_images(config, apply_fn, state: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """``images [1,T,H,W,3]`` uint8 BGR -> ``{"frame", "seediness", "instances"}`` RGB uint8 ``[h, w, 3]``.

    ``apply_fn`` is the model's (jitted) ``apply``."""
    outputs = apply_fn({"params": state["params"], **state["constants"]}, jnp.asarray(images))
    fg = foreground_mask(outputs["semseg_logits"], outputs["seediness"], config.model,
                         config.inference.seediness_fg_threshold)
    labels = cluster_clip(
        outputs["embeddings"][0], bandwidths(outputs["bandwidth_logits"][0], jnp), outputs["seediness"][0], fg[0],
        free_dim_bandwidths(config), **clustering_options(config),
    )
    t = images.shape[1] // 2
    frame = images[0, t, ::4, ::4, ::-1]
    seed = (np.asarray(outputs["seediness"][0, t]) * 255).astype(np.uint8)
    lab = np.asarray(labels[t])
    inst = np.where(lab[..., None] >= 0, PALETTE[np.maximum(lab, 0) % 256], 0).astype(np.uint8)
    h, w = lab.shape
    seed_rgb = np.repeat(seed[..., None], 3, -1)
    return {"frame": np.ascontiguousarray(frame[:h, :w]), "seediness": seed_rgb, "instances": inst}
