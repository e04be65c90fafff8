"""``--mode evaluate`` and ``--mode infer`` for any method on any benchmark.

The method comes from ``methods.METHODS`` (``config.method``), the benchmark from
``benchmarks.BENCHMARKS`` (``config.inference.benchmark``); this module only feeds one the other's output.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
import time

import cv2
import numpy as np

from stemseg_jax.benchmarks import get_benchmark
from stemseg_jax.benchmarks.base import ScoreOptions
from stemseg_jax.benchmarks.masks import longest_tracks, paint_frame
from stemseg_jax.io import image_size, ordinary_mode, read_image, voc_palette, write_indexed_png, write_json
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
                                   (record.height, record.width), video=record.name)
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
class FolderFrames:
    """The frames of a folder of images (sorted by name), read one at a time. Every frame's size is checked
    from its header up front, so a folder of mixed sizes is refused before anything is segmented or written."""

    def __init__(self, path: str):
        self.files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not self.files:
            raise FileNotFoundError(f"config.inference.input: no image files ({IMAGE_EXTENSIONS}) in {path}")
        self.hw = image_size(self.files[0])
        for f in self.files[1:]:
            if (hw := image_size(f)) != self.hw:
                raise ValueError(f"config.inference.input: {f} is {hw[0]}x{hw[1]}, but the "
                                 f"first frame {os.path.basename(self.files[0])} is {self.hw[0]}x{self.hw[1]}; "
                                 "a video's frames must share one size")

    def __len__(self) -> int:
        return len(self.files)

    def __call__(self, t: int) -> np.ndarray:
        return read_image(self.files[t])


class VideoFrames:
    """The frames of a video file, decoded lazily and only forward (OpenCV ``VideoCapture``): reading frame
    ``t`` after frame ``s < t`` decodes the frames between, an earlier frame reopens the file. Frames are
    counted once up front (``grab`` without conversion); memory does not grow with the video's length."""

    def __init__(self, path: str):
        self.path = path
        cap = cv2.VideoCapture(path)
        ok, first = cap.read()
        if not ok:
            cap.release()
            raise ValueError(f"config.inference.input: could not decode any frame of {path} (not a video OpenCV "
                             "can read?)")
        self.hw = first.shape[:2]
        n = 1
        while cap.grab():
            n += 1
        cap.release()
        self.num_frames = n
        self._cap, self._next, self._last = None, 0, None

    def __len__(self) -> int:
        return self.num_frames

    def __call__(self, t: int) -> np.ndarray:
        if self._last is not None and t == self._next - 1:
            return self._last
        if self._cap is None or t < self._next:
            if self._cap is not None:
                self._cap.release()
            self._cap, self._next = cv2.VideoCapture(self.path), 0
        while self._next < t:
            if not self._cap.grab():
                raise ValueError(f"config.inference.input: {self.path} ends before frame {t}")
            self._next += 1
        ok, frame = self._cap.read()
        if not ok:
            raise ValueError(f"config.inference.input: cannot decode frame {t} of {self.path}")
        if frame.shape[:2] != self.hw:
            raise ValueError(f"config.inference.input: frame {t} of {self.path} is {frame.shape[0]}x{frame.shape[1]}, "
                             f"the first is {self.hw[0]}x{self.hw[1]}")
        self._next, self._last = t + 1, frame
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_frames(path: str):
    """``FolderFrames`` or ``VideoFrames`` for ``config.inference.input``: callable ``frames(t)``, ``len``, ``hw``."""
    if os.path.isdir(path):
        return FolderFrames(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.inference.input: {path} does not exist")
    return VideoFrames(path)


def infer_input(config, workdir: str, gif_frames: int = 60) -> str:
    """Segments ``config.inference.input`` (a video file or a folder of frames) with ``config.method`` and
    writes ``masks/<frame>.png`` (indexed PNGs, one id per track), ``overlay.mp4`` and ``overlay.gif``.

    Streams: frames are read when the segmenter needs them and again, one at a time, to write the outputs;
    the GIF keeps at most ``gif_frames`` evenly spaced frames. Everything is written into a fresh folder that
    then replaces ``workdir/infer/<name>`` as a whole, so no file of an earlier run (e.g. of a longer video)
    survives and an interrupted run leaves the earlier output intact."""
    if not config.inference.input:
        raise ValueError("--mode infer needs --config.inference.input=PATH (a video file or a frame folder)")
    path = os.path.abspath(os.path.expandvars(config.inference.input))
    frames = open_frames(path)
    n = len(frames)
    segmenter = build_method(config, workdir, get_benchmark(config.inference.benchmark).class_mode)
    name = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    result = segmenter.segment(frames, n, frames.hw, video=name)
    # Up to 255 tracks (uint8 label maps), longest-lived first; the DAVIS benchmark stops at its 20.
    kept = longest_tracks(result.linked, min(255, len(result.linked.order) or 1))
    parent = os.path.join(os.path.abspath(workdir), "infer")
    os.makedirs(parent, exist_ok=True)
    out_dir = os.path.join(parent, name)
    staging = tempfile.mkdtemp(prefix=f".{name}.", dir=parent)
    try:
        gif_every = max(1, -(-n // gif_frames))
        gif = []
        video = None
        for t in range(n):
            labels = paint_frame(result.linked.label_maps[t], kept, **result.chain)
            write_indexed_png(os.path.join(staging, "masks", f"{t:05d}.png"), labels)
            rgb = overlay(frames(t), labels)
            if video is None:
                video = cv2.VideoWriter(os.path.join(staging, "overlay.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                                        10.0, (rgb.shape[1], rgb.shape[0]))
            video.write(np.ascontiguousarray(rgb[..., ::-1]))
            if t % gif_every == 0:
                gif.append(_gif_frame(rgb))
        video.release()
        gif[0].save(os.path.join(staging, "overlay.gif"), format="GIF", save_all=True, append_images=gif[1:],
                    duration=int(1000 * gif_every / 8.0), loop=0)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if hasattr(frames, "close"):
            frames.close()
    print(f"{n} frames, {len(kept)} tracks -> {out_dir} (masks/, overlay.mp4, overlay.gif)")
    return out_dir


def _replace_dir(new: str, dest: str) -> None:
    """Puts folder ``new`` at ``dest``, replacing what was there with two renames."""
    old = None
    if os.path.exists(dest):
        old = tempfile.mkdtemp(prefix=".old.", dir=os.path.dirname(dest))
        os.rmdir(old)
        os.replace(dest, old)
    os.replace(new, dest)
    os.chmod(dest, ordinary_mode(directory=True))
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _gif_frame(rgb: np.ndarray, max_side: int = 320):
    from PIL import Image

    im = Image.fromarray(rgb)
    scale = min(1.0, max_side / max(rgb.shape[:2]))
    return im.resize((int(rgb.shape[1] * scale), int(rgb.shape[0] * scale))) if scale < 1.0 else im


def _palette() -> np.ndarray:
    return np.asarray(voc_palette(256), np.uint8).reshape(256, 3)


def overlay(frame_bgr: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends track colours into a BGR frame; returns RGB ``[H, W, 3]`` uint8."""
    rgb = frame_bgr[..., ::-1].astype(np.float32)
    colours = _palette()[labels].astype(np.float32)
    fg = (labels > 0)[..., None]
    return np.where(fg, (1 - alpha) * rgb + alpha * colours, rgb).astype(np.uint8)
