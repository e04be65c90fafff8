"""``--mode smoke``: one forward, loss and backward pass on a generated clip, with shapes and timings."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from stemseg_jax.losses.objective import make_loss_fn
from stemseg_jax.model import build_model
from stemseg_jax.preprocessing import padded_dims


def generated_batch(config, *, height: int, width: int, num_instances: int = 3, seed: int = 0) -> dict:
    """A clip of moving coloured rectangles with full-resolution masks, in the pipeline's batch format."""
    rng = np.random.default_rng(seed)
    t = config.data.num_frames
    h, w = padded_dims(height, width)
    images = rng.integers(0, 256, (1, t, h, w, 3)).astype(np.uint8)
    masks = np.zeros((1, config.data.max_instances, t, h, w), bool)
    for i in range(num_instances):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        dy, dx = rng.integers(-2, 3, 2)
        for f in range(t):
            ys, xs = max(0, y0 + f * dy), max(0, x0 + f * dx)
            masks[0, i, f, ys : ys + h // 3, xs : xs + w // 3] = True
            images[0, f, ys : ys + h // 3, xs : xs + w // 3] = 60 * (i + 1)
    valid = np.zeros((1, config.data.max_instances), bool)
    valid[0, :num_instances] = True
    cats = np.where(valid, 1, 0).astype(np.int32)
    return {"images": images, "masks": masks, "instance_valid": valid, "category_ids": cats,
            "ignore": np.zeros((1, t, h, w), bool)}


def run_smoke(config, height: int | None = None, width: int | None = None) -> dict:
    height = height or config.data.min_dim
    width = width or config.data.max_dim
    batch = generated_batch(config, height=height, width=width)
    model = build_model(config)
    t0 = time.perf_counter()
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch["images"])
    jax.block_until_ready(variables)
    t_init = time.perf_counter() - t0

    constants = {k: v for k, v in variables.items() if k != "params"}
    forward = jax.jit(lambda v, x: model.apply(v, x))
    grad = jax.jit(jax.value_and_grad(make_loss_fn(config, model), has_aux=True))
    timings = {}
    for name, fn in (("forward", lambda: forward(variables, batch["images"])),
                     ("forward+loss+backward", lambda: grad(variables["params"], constants, batch))):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        timings[name] = (first, time.perf_counter() - t0)
        if name == "forward":
            outputs = out
        else:
            (total, terms), grads = out
    print(f"config {config.name}: clip {batch['images'].shape} (B, T, H, W, 3)  init {t_init:.1f} s")
    for k, v in outputs.items():
        print(f"  {k:18s} {None if v is None else tuple(v.shape)}")
    shown = "  ".join(f"{k}={float(v):.4f}" for k, v in terms.items() if k != "total")
    print(f"  loss {shown}  total={float(total):.4f}")
    gnorm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grads))))
    print(f"  gradient norm {gnorm:.4g}")
    for k, (first, again) in timings.items():
        print(f"  {k:22s} first call {first:6.2f} s (incl. compile)   next call {again:6.3f} s")
    return {"terms": {k: float(v) for k, v in terms.items()}, "total": float(total), "timings": timings}
