"""Throughput of the training input pipeline (clips/s) on synthetic data.

Rows:
  tiny — configs/youtube_vis.py:tiny on a synthetic mixture (YouTube-VIS-format videos 0.6 + COCO-format
         images 0.4, the image -> pseudo-video path included), default synthetic frame size.
  full — configs/youtube_vis.py (min_dim 640, max_dim 1196) on synthetic YouTube-VIS videos of
         720x1280: 8-frame clips resized to 640x1138 and padded to 640x1152, up to 16 instance slots.
each with 1 and 2 worker processes (and 0: loading in the calling process).

  python tools/bench_data.py --workdir /tmp/bench_data

Synthetic datasets are generated once under --workdir and reused.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import youtube_vis  # noqa: E402
from stemseg_jax.data import synthetic  # noqa: E402
from stemseg_jax.data.pipeline import build_train_iterator  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/stemseg_bench_data", "Where the synthetic datasets live.")
_ROWS = flags.DEFINE_list("rows", ["tiny", "full"], "Which rows to run.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker-process counts to measure.")
_BATCHES = flags.DEFINE_integer("batches", 10, "Timed batches per measurement (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed batches first (worker start-up, first plan).")


def _dataset(fmt: str, name: str, **kw) -> str:
    root = os.path.join(_WORKDIR.value, name)
    if not os.path.exists(os.path.join(root, "synthetic_info.json")):
        t0 = time.perf_counter()
        synthetic.generate(fmt, root, seed=0, **kw)
        print(f"generated {name} in {time.perf_counter() - t0:.1f} s", flush=True)
    return root


def _config(row: str):
    if row == "tiny":
        c = youtube_vis.get_config("tiny")
        videos = _dataset("ytvis", "ytvis_small", num_train=8, num_val=0)
        images = _dataset("coco", "coco_small", num_train=32, num_val=0)
        c.data.datasets = dict(
            youtube_vis=synthetic.dataset_config("ytvis", videos, weight=0.6),
            coco=synthetic.dataset_config("coco", images, weight=0.4),
        )
    elif row == "full":
        c = youtube_vis.get_config()
        root = _dataset("ytvis", "ytvis_720p", num_train=4, num_val=0, num_frames=20, height=720, width=1280)
        c.data.datasets = dict(youtube_vis=synthetic.dataset_config("ytvis", root, weight=1.0))
    else:
        raise app.UsageError(f"unknown row {row!r}")
    c.train.num_steps = 1000
    return c


def measure(config, workers: int, batches: int, warmup: int) -> tuple[float, float, tuple[int, ...]]:
    """Returns (clips/s over the timed batches, CPU seconds per clip of this process, images shape).

    The CPU time covers all loading only with ``workers=0`` (read threads run in this process).
    """
    it = build_train_iterator(config, seed=0, num_workers=workers)
    try:
        for _ in range(warmup):
            next(it)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(batches):
            batch = next(it)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        it.close()
    clips = batches * config.train.batch_size
    return clips / elapsed, cpu / clips, batch["images"].shape


def main(argv):
    del argv
    rows = []
    for row in _ROWS.value:
        config = _config(row)
        for workers in (int(w) for w in _WORKERS.value):
            rate, cpu, shape = measure(config, workers, _BATCHES.value, _WARMUP.value)
            cpu_txt = f"{cpu * 1000:.0f}" if workers == 0 else "-"
            rows.append((row, workers, rate, cpu_txt, shape))
            print(f"{row:5s} workers={workers}: {rate:6.2f} clips/s  cpu/clip {cpu_txt} ms  images {shape}", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| config | workers | clips/s | CPU ms/clip | batch images [B,T,H,W,3] |")
    print("|---|---|---|---|---|")
    for row, workers, rate, cpu_txt, shape in rows:
        print(f"| {row} | {workers} | {rate:.2f} | {cpu_txt} | {list(shape)} |")


if __name__ == "__main__":
    app.run(main)
