"""Inference throughput and training memory.

    python tools/bench_inference.py --config configs/kitti.py:tiny --frames 60
    python tools/bench_inference.py --config configs/davis.py:stage2 --memory-only --dtypes float32 bfloat16
    python tools/bench_inference.py --config configs/davis.py --num-frames 16 --memory-only   # all trained

Part 1 (unless --memory-only): frames/s of full-video inference on a synthetic video (randomly initialised
weights with calibrated frozen BN — throughput does not depend on the weights' values except through the
number of clusters), split into backbone, heads (decoders), clustering, linking and writing.

Part 2 (--memory, or --memory-only): peak memory of one train step (forward + loss + backward) for a clip of
``data.num_frames`` frames at the config's full input size, from XLA's memory analysis of the compiled step
(compile only, nothing runs), with and without rematerialisation (``model.remat``: each decoder step and
each trained backbone block keeps only its input), per activation dtype (``--dtypes``); the last column
is the remat peak as a share of the same dtype's plain peak.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stemseg_jax.config import load_config_file  # noqa: E402
from stemseg_jax.preprocessing import compute_resize_dims, padded_dims  # noqa: E402


class SyntheticVideo:
    """Moving coloured rectangles over a fixed noisy background; frame ``t`` (BGR uint8) made on demand,
    so that a long video costs no memory of its own."""

    def __init__(self, height: int, width: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.base = rng.integers(0, 255, (height, width, 3), np.uint8)
        self.boxes = []
        for _ in range(4):
            h, w = height // 4, width // 6
            self.boxes.append((h, w, rng.integers(0, height - h), rng.integers(0, width - w),
                               *rng.integers(-3, 4, 2), rng.integers(0, 255, 3, np.uint8)))

    def __call__(self, t: int) -> np.ndarray:
        frame = self.base.copy()
        height, width = frame.shape[:2]
        for h, w, y0, x0, vy, vx, colour in self.boxes:
            y = int(np.clip(y0 + vy * t, 0, height - h))
            x = int(np.clip(x0 + vx * t, 0, width - w))
            frame[y : y + h, x : x + w] = colour
        return frame


def bench_video(config, num_frames: int, height: int, width: int) -> dict:
    from stemseg_jax.benchmarks import get_benchmark
    from stemseg_jax.inference.video import VideoSegmenter
    from stemseg_jax.train.trainer import init_state

    frames = SyntheticVideo(height, width)
    rh, rw = compute_resize_dims(height, width, config.data.min_dim, config.data.max_dim)
    ph, pw = padded_dims(rh, rw)
    state = init_state(config, np.zeros((1, config.data.num_frames, ph, pw, 3), np.uint8), jax.random.PRNGKey(0))
    segmenter = VideoSegmenter(config, {"params": state["params"], **state["constants"]})
    segmenter.segment(frames, min(num_frames, config.data.num_frames + 2), (height, width))  # compile
    t0 = time.perf_counter()
    result = segmenter.segment(frames, num_frames, (height, width))
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # the benchmark's writer, without its split-level finish
        get_benchmark(config.inference.benchmark).open_split(tmp, config).add(
            "0000", [f"{t:05d}" for t in range(num_frames)], result)
    writing = time.perf_counter() - t0
    return {"total": total + writing, **result.timings, "writing": writing, "tracks": len(result.linked.order)}


def train_step_memory(config, remat: bool, dtype: str | None = None) -> dict:
    """XLA's memory analysis of the compiled train step (forward + loss + backward) for one clip of
    ``data.num_frames`` frames of 480x854 resized as the config does; ``dtype``: ``model.dtype`` override."""
    from stemseg_jax.losses.objective import make_loss_fn
    from stemseg_jax.model import build_model, resolve_conv2d_impl

    config = config.copy_and_resolve_references()
    config.model.remat = remat
    if dtype is not None:
        config.model.dtype = dtype
    h, w = padded_dims(*compute_resize_dims(480, 854, config.data.min_dim, config.data.max_dim))
    t, n_inst = config.data.num_frames, config.data.max_instances
    model = build_model(config)
    images = jax.ShapeDtypeStruct((1, t, h, w, 3), jnp.uint8)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    batch = {
        "images": images,
        "masks": jax.ShapeDtypeStruct((1, n_inst, t, h, w), jnp.bool_),
        "instance_valid": jax.ShapeDtypeStruct((1, n_inst), jnp.bool_),
        "category_ids": jax.ShapeDtypeStruct((1, n_inst), jnp.int32),
        "ignore": jax.ShapeDtypeStruct((1, t, h, w), jnp.bool_),
    }

    constants = {k: v for k, v in variables.items() if k != "params"}
    t0 = time.perf_counter()
    grad = jax.grad(make_loss_fn(config, model), has_aux=True)
    compiled = jax.jit(grad).lower(variables["params"], constants, batch).compile()
    mem = compiled.memory_analysis()
    gib = 1024**3
    return {
        "clip": f"1x{t}x{h}x{w}",
        "dtype": config.model.dtype,
        "conv2d_impl": resolve_conv2d_impl(config.model.get("conv2d_impl", "auto")),
        "temp_gib": mem.temp_size_in_bytes / gib,
        "args_gib": mem.argument_size_in_bytes / gib,
        "out_gib": mem.output_size_in_bytes / gib,
        "peak_gib": (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / gib,
        "compile_s": time.perf_counter() - t0,
    }


def infer_command_rss(config_spec: str, frame_counts: list[int], height: int, width: int, work: str) -> list[dict]:
    """Peak RSS of ``python -m stemseg_jax.main --mode infer`` itself on a video file of each length: the
    video is written with OpenCV (MP4), the model is the config's, randomly initialised and saved as a
    converted checkpoint; each run is its own process, measured with ``os.wait4``."""
    import subprocess

    import cv2

    from stemseg_jax.convert import save_variables
    from stemseg_jax.train.trainer import init_state

    config = load_config_file(config_spec)
    ph, pw = padded_dims(*compute_resize_dims(height, width, int(config.inference.min_dim or config.data.min_dim),
                                              int(config.inference.max_dim or config.data.max_dim)))
    state = init_state(config, np.zeros((1, config.data.num_frames, ph, pw, 3), np.uint8), jax.random.PRNGKey(0))
    weights = os.path.join(work, "weights")
    save_variables({"params": state["params"], **state["constants"]}, weights, overwrite=True)
    rows = []
    for n in frame_counts:
        path = os.path.join(work, f"video_{n}.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (width, height))
        frames = SyntheticVideo(height, width)
        for t in range(n):
            writer.write(frames(t))
        writer.release()
        cmd = [sys.executable, "-m", "stemseg_jax.main", "--config", config_spec, "--mode", "infer",
               "--workdir", os.path.join(work, "run"), f"--config.inference.input={path}",
               f"--config.inference.checkpoint={weights}"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
        rows.append({"frames": n, "seconds": time.perf_counter() - t0, "rss_mib": usage.ru_maxrss / 1024})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--dims", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="override data/inference min_dim and max_dim (the network input size)")
    p.add_argument("--rss", action="store_true",
                   help="also print this process's peak resident memory (for streaming checks: run once with "
                        "--frames 30 and once with --frames 300)")
    p.add_argument("--rss-command", type=int, nargs="+", metavar="FRAMES",
                   help="peak RSS of the --mode infer command itself on video files of these lengths (e.g. 30 300)")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--memory-only", action="store_true")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                   help="model.dtype values of the memory rows (each compiled with and without remat)")
    p.add_argument("--num-frames", type=int, help="override data.num_frames (the memory rows' clip length)")
    p.add_argument("--conv2d-impl", choices=["auto", "cpu", "xla"], help="override model.conv2d_impl")
    args = p.parse_args(argv)
    config = load_config_file(args.config)
    if args.num_frames:
        config.data.num_frames = args.num_frames
    if args.conv2d_impl:
        config.model.conv2d_impl = args.conv2d_impl
    if args.dims:
        config.data.min_dim, config.data.max_dim = args.dims
        config.inference.min_dim, config.inference.max_dim = args.dims
    print(f"config {args.config}  device {jax.devices()[0].platform} x{jax.device_count()}")
    if args.rss_command:
        with tempfile.TemporaryDirectory() as work:
            rows = infer_command_rss(args.config, args.rss_command, args.height, args.width, work)
        print("| command | video | wall s | peak RSS | vs first |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| --mode infer | {r['frames']} x {args.height}x{args.width} (mp4) | {r['seconds']:.1f} | "
                  f"{r['rss_mib']:.0f} MiB | {r['rss_mib'] / rows[0]['rss_mib']:.2f}x |")
        return
    if not args.memory_only:
        r = bench_video(config, args.frames, args.height, args.width)
        parts = ("backbone", "heads", "clustering", "linking", "writing")
        print(f"| video | frames/s | {' | '.join(parts)} | tracks |")
        print("|---|---|" + "---|" * len(parts) + "---|")
        shares = " | ".join(f"{r[k]:.2f} s ({100 * r[k] / r['total']:.0f} %)" for k in parts)
        video = f"{args.frames}x{args.height}x{args.width}"
        print(f"| {video} | {args.frames / r['total']:.2f} | {shares} | {r['tracks']} |")
        if args.rss:
            import resource

            print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.memory or args.memory_only:
        trained = ("backbone + FPN frozen" if config.model.freeze_backbone
                   else f"all but stem + stages < {config.model.freeze_at}")
        print("| train step | trained | clip | conv2d impl | dtype | remat | peak (args+temp+out) GiB | temp GiB | "
              "vs no remat | compile s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for dtype in args.dtypes:
            plain = None
            for remat in (False, True):
                m = train_step_memory(config, remat, dtype)
                plain = plain or m["peak_gib"]
                print(f"| {args.config} | {trained} | {m['clip']} | {m['conv2d_impl']} | {m['dtype']} | {remat} | "
                      f"{m['peak_gib']:.2f} | {m['temp_gib']:.2f} | {100 * m['peak_gib'] / plain:.0f} % | "
                      f"{m['compile_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
