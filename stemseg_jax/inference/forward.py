"""Running the network on one clip: ``forward_clip(config, variables, frames)`` -> raw head outputs."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stemseg_jax.model import build_model
from stemseg_jax.model.outputs import bandwidths
from stemseg_jax.preprocessing import SIZE_DIVISIBILITY


@functools.lru_cache(maxsize=8)
def _compiled_forward(model_json: str):
    """One jitted function per ``config.model`` (keyed by its JSON, as ConfigDicts are not hashable);
    ``jax.jit`` then compiles once per input shape."""
    model = build_model(ml_collections.ConfigDict({"model": json.loads(model_json)}))

    @jax.jit
    def forward(variables, clip):
        out = model.apply(variables, clip)
        return {
            "embeddings": out["embeddings"][0],
            "bandwidths": bandwidths(out["bandwidth_logits"][0], jnp),
            "seediness": out["seediness"][0],
            "semseg_logits": None if out["semseg_logits"] is None else out["semseg_logits"][0],
        }

    return forward


def forward_clip(config, variables, frames) -> dict[str, np.ndarray | None]:
    """Runs the network on one clip.

    Args:
      config: the ConfigDict the variables belong to (``config.model`` builds the network).
      variables: ``{"params", "frozen_bn", "buffers"}`` as returned by ``stemseg_jax.convert.load_variables``
        (put them on the device once with ``jax.device_put`` when calling repeatedly).
      frames: uint8 BGR ``[T, H, W, 3]``, H and W multiples of 32 (see
        ``stemseg_jax.preprocessing.preprocess_frames``), T one of 2, 4, 8, 16, 24, 32.

    Returns:
      A dict of float32 NumPy arrays with ``h, w = H/4, W/4``: ``embeddings [T, h, w, E]``,
      ``bandwidths [T, h, w, V]`` (exp(logit)·10), ``seediness [T, h, w]`` (after the sigmoid) and
      ``semseg_logits [T, h, w, C+1]`` (last channel: foreground logit) or None without a semantic head.
      The network is compiled once per (config, frame shape).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3], got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 BGR, got dtype {frames.dtype}")
    t, h, w, _ = frames.shape
    if h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY:
        raise ValueError(
            f"frame height and width must be multiples of {SIZE_DIVISIBILITY} (pad with "
            f"stemseg_jax.preprocessing.preprocess_frames), got {h}x{w}"
        )
    out = _compiled_forward(config.model.to_json(sort_keys=True))(variables, frames[None])
    return {k: None if v is None else np.asarray(v, dtype=np.float32) for k, v in out.items()}
