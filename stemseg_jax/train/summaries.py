"""Image summaries of a training clip: the frame, its seediness map and its clustered instances."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from stemseg_jax.inference.clustering import cluster_clip, clustering_options, free_dim_bandwidths
from stemseg_jax.model import build_model

PALETTE = np.random.default_rng(3).integers(64, 256, size=(256, 3)).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _forward(config_json: str):
    import ml_collections

    config = ml_collections.ConfigDict(__import__("json").loads(config_json))
    model = build_model(config)
    return jax.jit(model.apply)


def foreground_mask(config, outputs: dict) -> jax.Array:
    """``[B,T,h,w]`` foreground: sigmoid(fg logit) > 0.5 with a semantic head, else seediness > threshold (§6.3)."""
    if outputs.get("semseg_logits") is not None and config.model.foreground_channel:
        return jax.nn.sigmoid(outputs["semseg_logits"][..., -1]) > 0.5
    return outputs["seediness"] > config.inference.seediness_fg_threshold


def clip_summary_images(config, state: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """``images [1,T,H,W,3]`` uint8 BGR -> ``{"frame", "seediness", "instances"}`` RGB uint8 ``[h, w, 3]``."""
    apply = _forward(config.to_json())
    outputs = apply({"params": state["params"], **state["constants"]}, jnp.asarray(images))
    fg = foreground_mask(config, outputs)
    bandwidths = jnp.exp(outputs["bandwidth_logits"]) * 10.0
    labels = cluster_clip(
        outputs["embeddings"][0], bandwidths[0], outputs["seediness"][0], fg[0],
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
