"""Model throughput: forward and train-step time and GFLOP/s against the same run's matmul rate.

    python tools/bench_model.py --config configs/davis.py --frames 8 --height 256 --width 448

FLOPs come from XLA's cost analysis of the compiled function; the baseline is a large float32 matrix
product measured in the same process, so the ratio column is comparable across noisy machines.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stemseg_jax.config import load_config_file  # noqa: E402
from stemseg_jax.model import build_model  # noqa: E402
from stemseg_jax.smoke import generated_batch  # noqa: E402


def _time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def _flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    return 2 * n**3 / _time(lambda: f(a, b), repeats) / 1e9


def bench_config(config, label: str, args) -> list[tuple]:
    batch = generated_batch(config, height=args.height, width=args.width)
    model = build_model(config)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch["images"])
    fwd = jax.jit(model.apply).lower(variables, batch["images"]).compile()
    rows = [(label, "forward", _time(lambda: fwd(variables, batch["images"]), args.repeats), _flops(fwd))]
    if args.no_train_step:
        return rows
    from stemseg_jax.losses.objective import make_loss_fn

    constants = {k: v for k, v in variables.items() if k != "params"}
    grad = jax.value_and_grad(make_loss_fn(config, model), has_aux=True)
    step = jax.jit(grad).lower(variables["params"], constants, batch).compile()
    t_step = _time(lambda: step(variables["params"], constants, batch), args.repeats)
    rows.append((label, "train step", t_step, _flops(step)))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=448)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--conv3d-impl", nargs="+", default=["shifted2d", "direct"])
    p.add_argument("--conv2d-impl", nargs="+", default=["auto"], help="model.conv2d_impl values to compare")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--no-train-step", action="store_true")
    args = p.parse_args(argv)

    base = load_config_file(args.config)
    base.data.num_frames = args.frames
    base.model.dtype = args.dtype
    mm_before = matmul_gflops()
    rows = []
    for impl in args.conv3d_impl:
        for impl2d in args.conv2d_impl:
            config = base.copy_and_resolve_references()
            config.model.conv3d_impl = impl
            config.model.conv2d_impl = impl2d
            rows += bench_config(config, impl if len(args.conv2d_impl) == 1 else f"{impl} / 2d {impl2d}", args)

    # The better of a matmul rate taken before and one taken after the model runs: a conservative
    # baseline when the machine's speed drifts during the run.
    mm = max(mm_before, matmul_gflops())
    print(f"config {args.config}  clip 1x{args.frames}x{args.height}x{args.width}  dtype {args.dtype}  "
          f"devices {jax.devices()[0].platform} x{jax.device_count()}")
    print(f"float32 matmul 2048^3 (same run, best of before/after): {mm:.1f} GFLOP/s")
    print("| conv3d impl | pass | seconds | GFLOP | GFLOP/s | vs matmul |")
    print("|---|---|---|---|---|---|")
    for impl, name, t, flops in rows:
        rate = flops / t / 1e9
        print(f"| {impl} | {name} | {t:.3f} | {flops / 1e9:.1f} | {rate:.1f} | {rate / mm:.2f} |")
    return rows, mm


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
