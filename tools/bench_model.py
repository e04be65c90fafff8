"""Model throughput: forward and train-step time and GFLOP/s against the same run's matmul rate.

    python tools/bench_model.py --config configs/davis.py --frames 8 --height 256 --width 448
    python tools/bench_model.py --config configs/davis.py --frames 8 --height 256 --width 448 --against-torch

FLOPs come from XLA's cost analysis of the compiled function; the baseline is a large float32 matrix
product measured in the same process, so the ratio column is comparable across noisy machines.

``--against-torch`` times the same network in PyTorch beside ours in one process: the spec-built
modules of ``tests/torch_reference.py`` with random weights, converted into our variables by
``stemseg_jax.convert`` (so both compute the same function), the same clip and targets, PyTorch's
train step being forward + the official per-clip, per-instance loss + backward with what the config
freezes set to ``requires_grad=False``. It checks that both compute the same outputs, loss and
gradients before printing the times and their ratio. PyTorch is an optional dependency:
``pip install -e ".[test]"`` (or ``pip install torch``).
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
    """Best wall time of ``fn()`` over ``repeats`` calls after one warm-up (JAX results waited for; PyTorch's
    CPU calls return when done)."""
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


def _import_torch_reference():
    try:
        import torch
    except ImportError:
        raise SystemExit(
            "--against-torch needs PyTorch (CPU is enough): pip install -e \".[test]\"  (or: pip install torch)"
        ) from None
    from tests import torch_reference

    return torch, torch_reference


def _rel_err(ours, theirs) -> float:
    """Relative L2 error of two arrays, or of two pytrees of equal structure taken as one vector."""
    a = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(ours)]).astype(np.float64)
    b = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(theirs)]).astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def against_torch(args) -> list[tuple]:
    """Forward and train step of the same network in PyTorch and in JAX, timed in this process."""
    torch, tr = _import_torch_reference()
    from stemseg_jax.convert import convert_state_dict, expected_variables
    from stemseg_jax.losses.objective import make_loss_fn

    torch.set_num_threads(args.torch_threads)
    config = load_config_file(args.config)
    config.data.num_frames = args.frames
    config.model.dtype = args.dtype
    config.model.conv3d_impl = args.conv3d_impl[0]
    config.model.conv2d_impl = args.conv2d_impl[0]
    if args.dtype != "float32":
        raise SystemExit("--against-torch compares float32 (the official code trains in float32)")
    batch = generated_batch(config, height=args.height, width=args.width)
    ref = tr.freeze_like_config(tr.randomize_(tr.STEmSegReference(config.model, args.frames), seed=0), config.model)
    state = tr.state_dict_numpy(ref)
    variables = convert_state_dict(state, expected_variables(config), source="the PyTorch reference model")
    model = build_model(config)
    images_t = torch.from_numpy(batch["images"])
    batch_t = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}

    mm_before = matmul_gflops()
    fwd = jax.jit(model.apply).lower(variables, batch["images"]).compile()
    ours = fwd(variables, batch["images"])
    with torch.no_grad():
        theirs = ref(images_t)
    checks = {f"outputs {k}": _rel_err(ours[k], theirs[k].numpy()) for k in ("embeddings", "bandwidth_logits",
                                                                             "seediness") if theirs[k] is not None}

    def torch_forward():
        with torch.no_grad():
            ref(images_t)

    rows = [("forward", _time(torch_forward, args.repeats),
             _time(lambda: fwd(variables, batch["images"]), args.repeats), _flops(fwd))]
    if not args.no_train_step:
        constants = {k: v for k, v in variables.items() if k != "params"}
        step = jax.jit(jax.value_and_grad(make_loss_fn(config, model), has_aux=True))
        step = step.lower(variables["params"], constants, batch).compile()
        (loss, terms), grads = step(variables["params"], constants, batch)

        def torch_step():
            for p in ref.parameters():
                p.grad = None
            total, torch_terms = tr.stemseg_loss(ref(images_t), batch_t, config)
            total.backward()
            return total, torch_terms

        total_t, terms_t = torch_step()
        total_t = float(total_t.detach())
        checks["loss"] = abs(float(loss) - total_t) / abs(total_t)
        for key in ("lovasz", "smoothness", "seediness"):
            want = float(terms_t[key].detach())
            checks[f"loss {key}"] = abs(float(terms[key]) - want) / max(abs(want), 1e-30)
        torch_grads = {k: np.zeros_like(v) for k, v in state.items()}
        for name, p in ref.named_parameters():
            if p.grad is not None:
                torch_grads[name] = p.grad.numpy().copy()
        torch_grads = convert_state_dict(torch_grads, expected_variables(config), source="the PyTorch gradients")
        checks["gradients"] = _rel_err(grads, torch_grads["params"])
        rows.append(("train step", _time(torch_step, args.repeats),
                     _time(lambda: step(variables["params"], constants, batch), args.repeats), _flops(step)))
    mm = max(mm_before, matmul_gflops())

    print(f"config {args.config}  clip 1x{args.frames}x{args.height}x{args.width}  float32  conv3d "
          f"{config.model.conv3d_impl}  conv2d {config.model.conv2d_impl}  torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)  jax {jax.__version__} ({jax.devices()[0].platform})")
    print(f"float32 matmul 2048^3 (JAX, same run, best of before/after): {mm:.1f} GFLOP/s")
    print("same numbers (relative L2 error, JAX vs PyTorch): "
          + ", ".join(f"{k} {v:.1e}" for k, v in checks.items()))
    print("| pass | PyTorch s | JAX s | PyTorch / JAX (>1: JAX faster) | JAX GFLOP/s | JAX vs matmul |")
    print("|---|---|---|---|---|---|")
    for name, t_torch, t_jax, flops in rows:
        rate = flops / t_jax / 1e9
        print(f"| {name} | {t_torch:.3f} | {t_jax:.3f} | **{t_torch / t_jax:.2f}** | {rate:.1f} | {rate / mm:.2f} |")
    return rows, checks


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
    p.add_argument("--against-torch", action="store_true",
                   help="time the same network in PyTorch beside ours (first --conv3d-impl / --conv2d-impl)")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all)")
    args = p.parse_args(argv)
    if args.against_torch:
        return against_torch(args)

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
