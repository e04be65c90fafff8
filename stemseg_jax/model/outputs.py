"""How the network's raw outputs are read: the bandwidths and the foreground rule (spec §3.3, §6.3).

Written once here for the losses, the summaries and inference. Array-agnostic: works on NumPy and JAX arrays.
"""

from __future__ import annotations

import numpy as np

BANDWIDTH_SCALE = 10.0  # bandwidth (a precision) = exp(v) * 10, spec §3.3


def bandwidths(bandwidth_logits, xp=np):
    """``[..., V]`` predicted precisions from the head's log-bandwidths ``v``: ``exp(v) * 10``. Pass
    ``xp=jax.numpy`` inside traced code."""
    return xp.exp(bandwidth_logits) * BANDWIDTH_SCALE


def foreground_mask(semseg_logits, seediness, model_config, seediness_threshold: float):
    """``[...]`` bool foreground of (clip-averaged) outputs (spec §6.3): the foreground channel's
    sigmoid > 0.5 (logit > 0) with a semantic head that has one, else seediness > ``seediness_threshold``.

    Args:
      semseg_logits: ``[..., C+1]`` logits, last channel the foreground logit, or None.
      seediness: ``[...]`` seediness after the sigmoid (read only without a foreground channel; may be None then).
    """
    if semseg_logits is not None and model_config.foreground_channel:
        return semseg_logits[..., -1] > 0.0
    return seediness > seediness_threshold
