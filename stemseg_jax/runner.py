"""``--mode evaluate`` and ``--mode infer`` for any method on any benchmark.

The method comes from ``methods.METHODS`` (``config.method``), the benchmark from
``benchmarks.BENCHMARKS`` (``config.inference.benchmark``); this module only feeds one the other's output.
"""

from __future__ import annotations

import glob
import logging
import os
import time

import cv2
import numpy as np

from stemseg_jax.benchmarks import get_benchmark
from stemseg_jax.benchmarks.base import ScoreOptions
from stemseg_jax.benchmarks.masks import paint_longest_tracks
from stemseg_jax.io import read_image, voc_palette, write_indexed_png, write_json
from stemseg_jax.methods import build_method

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def evaluate_split(config, workdir: str) -> dict:
    """Segments every video of ``config.data.val_dataset`` with ``config.method``, writes the benchmark's
    result files under ``workdir/eval/<benchmark>`` and scores them when the ground truth is available."""
    from stemseg_jax.data import load_dataset

    benchmark = get_benchmark(config.inference.benchmark)
    val = config.data.val_dataset
    records = load_dataset(val, field="data.val_dataset")
    segmenter = build_method(config, workdir, benchmark.class_mode)
    out_dir = os.path.join(os.path.abspath(workdir), "eval", benchmark.name)
    results_dir = os.path.join(out_dir, "results")
    os.makedirs(results_dir, exist_ok=True)
    writer = benchmark.open_split(results_dir, config)
    timings: dict[str, float] = {}
    num_frames = 0
    t_start = time.perf_counter()
    for record in records:
        result = segmenter.segment(lambda t, r=record: read_image(r.frame_paths[t]), len(record.frame_paths),
                                   (record.height, record.width))
        num_frames += len(record.frame_paths)
        for k, v in result.timings.items():
            timings[k] = timings.get(k, 0.0) + v
        t0 = time.perf_counter()
        writer.add(record.name, [os.path.basename(p) for p in record.frame_paths], result)
        timings["writing"] = timings.get("writing", 0.0) + time.perf_counter() - t0
        log.info("segmented %s (%d frames, %d tracks)", record.name, len(record.frame_paths),
                 len(result.linked.order))
    seconds = time.perf_counter() - t_start
    split = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    print(f"inference: {len(records)} videos, {num_frames} frames in {seconds:.1f} s "
          f"({num_frames / max(seconds, 1e-9):.2f} frames/s); {split}")
    results = writer.finish()
    ground_truth = benchmark.ground_truth(val)
    metrics = None
    if ground_truth is None:
        print(f"wrote {results}; {benchmark.missing_ground_truth_hint()}")
    else:
        metrics = benchmark.score(ground_truth, results, ScoreOptions(sequences=[r.name for r in records]))
        print(benchmark.format_table(metrics))
    summary = {"benchmark": benchmark.name, "method": config.get("method", "stemseg"), "videos": len(records),
               "frames": num_frames, "inference_seconds": seconds, "inference_timings": timings, "metrics": metrics}
    write_json(os.path.join(out_dir, "metrics.json"), summary, indent=1)
    return summary


# ---------------------------------------------------------------------------------------------- --mode infer
def _list_frames(path: str) -> tuple[int, callable, tuple[int, int]]:
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f"config.inference.input: no image files ({IMAGE_EXTENSIONS}) in {path}")
        first = read_image(files[0])
        return len(files), lambda t: read_image(files[t]), first.shape[:2]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.inference.input: {path} does not exist")
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        raise ValueError(f"config.inference.input: could not decode any frame of {path}")
    return len(frames), lambda t: frames[t], frames[0].shape[:2]


def infer_input(config, workdir: str) -> str:
    """Segments ``config.inference.input`` (a video file or a folder of frames) with ``config.method`` and
    writes ``masks/<frame>.png`` (indexed PNGs, one id per track), ``overlay.mp4`` and ``overlay.gif``."""
    path = os.path.abspath(os.path.expandvars(config.inference.input or ""))
    if not config.inference.input:
        raise ValueError("--mode infer needs --config.inference.input=PATH (a video file or a frame folder)")
    n, load, hw = _list_frames(path)
    segmenter = build_method(config, workdir, get_benchmark(config.inference.benchmark).class_mode)
    result = segmenter.segment(load, n, hw)
    # Up to 255 tracks (uint8 label maps), longest-lived first; the DAVIS benchmark stops at its 20.
    label_maps, kept = paint_longest_tracks(result.linked, min(255, len(result.linked.order) or 1), **result.chain)
    name = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    out_dir = os.path.join(os.path.abspath(workdir), "infer", name)
    for t in range(n):
        write_indexed_png(os.path.join(out_dir, "masks", f"{t:05d}.png"), label_maps[t])
    overlays = [overlay(load(t), label_maps[t]) for t in range(n)]
    write_overlay_video(os.path.join(out_dir, "overlay.mp4"), overlays)
    write_gif(os.path.join(out_dir, "overlay.gif"), overlays)
    print(f"{n} frames, {len(kept)} tracks -> {out_dir} (masks/, overlay.mp4, overlay.gif)")
    return out_dir


def _palette() -> np.ndarray:
    return np.asarray(voc_palette(256), np.uint8).reshape(256, 3)


def overlay(frame_bgr: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends track colours into a BGR frame; returns RGB ``[H, W, 3]`` uint8."""
    rgb = frame_bgr[..., ::-1].astype(np.float32)
    colours = _palette()[labels].astype(np.float32)
    fg = (labels > 0)[..., None]
    return np.where(fg, (1 - alpha) * rgb + alpha * colours, rgb).astype(np.uint8)


def write_overlay_video(path: str, frames_rgb: list[np.ndarray], fps: float = 10.0) -> None:
    h, w = frames_rgb[0].shape[:2]
    tmp = path + ".tmp.mp4"
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames_rgb:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    os.replace(tmp, path)


def write_gif(path: str, frames_rgb: list[np.ndarray], fps: float = 8.0, max_side: int = 480) -> None:
    from PIL import Image

    scale = min(1.0, max_side / max(frames_rgb[0].shape[:2]))
    images = []
    for f in frames_rgb:
        im = Image.fromarray(f)
        if scale < 1.0:
            im = im.resize((int(f.shape[1] * scale), int(f.shape[0] * scale)))
        images.append(im)
    tmp = path + ".tmp"
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    os.replace(tmp, path)
