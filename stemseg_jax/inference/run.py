"""``--mode evaluate`` and ``--mode infer``: restore a checkpoint, segment videos, write and score results."""

from __future__ import annotations

import glob
import logging
import os
import time

import cv2
import numpy as np

from stemseg_jax.checkpoints import restore_model_variables
from stemseg_jax.inference.tracks import (
    select_tracks_davis,
    select_tracks_ytvis,
    write_davis_outputs,
    write_kitti_outputs,
)
from stemseg_jax.inference.video import VideoSegmenter

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def restore_variables(config, workdir: str | None) -> dict:
    """Model variables from ``config.inference.checkpoint`` (a converted model or a train checkpoint
    step directory) or else from the newest checkpoint of ``workdir/checkpoints``. From a train state
    with a moving average (``train.ema_decay``) the average, unless ``inference.use_ema`` is False."""
    path = config.inference.checkpoint
    if not path:
        ckpt_dir = os.path.join(os.path.abspath(workdir or "."), "checkpoints")
        steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) if os.path.isdir(ckpt_dir) else []
        if not steps:
            raise FileNotFoundError(
                f"no checkpoint in {ckpt_dir}; train first or set --config.inference.checkpoint=PATH "
                "(a converted official model, see README 'Using the published weights')"
            )
        path = os.path.join(ckpt_dir, str(steps[-1]))
    return restore_model_variables(path, "config.inference.checkpoint", config.inference.get("use_ema", True))


def _video_loader(record):
    from stemseg_jax.io import read_image

    return lambda t: read_image(record.frame_paths[t])


def evaluate_split(config, workdir: str) -> dict:
    """Segments every video of ``config.data.val_dataset``, writes the benchmark's result files under
    ``workdir/eval/<benchmark>`` and scores them when the ground truth is available."""
    from stemseg_jax import evaluation
    from stemseg_jax.data import load_dataset

    benchmark = config.inference.benchmark
    val = config.data.val_dataset
    records = load_dataset(val, field="data.val_dataset")
    segmenter = VideoSegmenter(config, restore_variables(config, workdir))
    out_dir = os.path.join(os.path.abspath(workdir), "eval", benchmark)
    results_dir = os.path.join(out_dir, "results")
    os.makedirs(results_dir, exist_ok=True)
    timings: dict[str, float] = {}
    ytvis_entries = []
    num_frames = 0
    t_start = time.perf_counter()
    for record in records:
        result = segmenter.segment(_video_loader(record), len(record.frame_paths), (record.height, record.width))
        num_frames += len(record.frame_paths)
        for k, v in result.timings.items():
            timings[k] = timings.get(k, 0.0) + v
        chain = dict(scale=result.scale, resized_hw=result.resized_hw, original_hw=result.original_hw)
        t0 = time.perf_counter()
        if benchmark == "davis":
            names = [os.path.basename(p) for p in record.frame_paths]
            write_davis_outputs(results_dir, record.name, names, result.linked, max_tracks=20, **chain)
        elif benchmark == "kitti_mots":
            write_kitti_outputs(results_dir, record.name, result.linked, result.class_info,
                                max_tracks=int(config.inference.max_tracks), **chain)
        elif benchmark == "ytvis":
            ytvis_entries += select_tracks_ytvis(result.linked, result.class_info, video_id=int(record.name),
                                                 max_tracks=int(config.inference.max_tracks), **chain)
        else:
            raise ValueError(f"config.inference.benchmark must be davis, ytvis or kitti_mots, got {benchmark!r}")
        timings["writing"] = timings.get("writing", 0.0) + time.perf_counter() - t0
        log.info("segmented %s (%d frames, %d tracks)", record.name, len(record.frame_paths),
                 len(result.linked.order))
    seconds = time.perf_counter() - t_start
    split = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    print(f"inference: {len(records)} videos, {num_frames} frames in {seconds:.1f} s "
          f"({num_frames / max(seconds, 1e-9):.2f} frames/s); {split}")
    metrics = _score(config, benchmark, results_dir, records, ytvis_entries, evaluation)
    summary = {"benchmark": benchmark, "videos": len(records), "frames": num_frames,
               "inference_seconds": seconds, "inference_timings": timings, "metrics": metrics}
    from stemseg_jax.io import write_json

    write_json(os.path.join(out_dir, "metrics.json"), summary, indent=1)
    return summary


def _score(config, benchmark, results_dir, records, ytvis_entries, evaluation):
    val = config.data.val_dataset
    root = os.path.expandvars(str(val.root))
    if benchmark == "kitti_mots":
        if config.inference.kitti_postprocess:
            results_dir = evaluation.writers.postprocess_kitti_mots_dir(
                results_dir, area_scale=float(config.inference.kitti_min_area_scale)
            )
        result = evaluation.evaluate_kitti_mots(root, results_dir, sequences=[r.name for r in records])
    elif benchmark == "davis":
        result = evaluation.evaluate_davis(root, results_dir, sequences=[r.name for r in records])
    else:
        paths = evaluation.writers.write_ytvis_results(results_dir, ytvis_entries)
        gt_json = val.get("gt_json", "")
        if not gt_json:
            print(f"wrote {paths[0]}; no ground truth configured (data.val_dataset.gt_json), so no metrics "
                  "(YouTube-VIS val ground truth is private: upload results.zip to the evaluation server)")
            return None
        result = evaluation.evaluate_ytvis(os.path.expandvars(gt_json), paths[0])
    print(evaluation.format_table(result))
    return result


# ---------------------------------------------------------------------------------------------- --mode infer
def _list_frames(path: str) -> tuple[int, callable, tuple[int, int]]:
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f"config.inference.input: no image files ({IMAGE_EXTENSIONS}) in {path}")
        from stemseg_jax.io import read_image

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
    """Segments ``config.inference.input`` (a video file or a folder of frames) and writes
    ``masks/<frame>.png`` (indexed PNGs, one id per track), ``overlay.mp4`` and ``overlay.gif``."""
    from stemseg_jax.io import write_indexed_png

    path = os.path.abspath(os.path.expandvars(config.inference.input or ""))
    if not config.inference.input:
        raise ValueError("--mode infer needs --config.inference.input=PATH (a video file or a frame folder)")
    n, load, hw = _list_frames(path)
    segmenter = VideoSegmenter(config, restore_variables(config, workdir))
    result = segmenter.segment(load, n, hw)
    label_maps, kept = select_tracks_davis(
        result.linked, scale=result.scale, resized_hw=result.resized_hw, original_hw=result.original_hw,
        max_tracks=min(255, len(result.linked.order) or 1),
    )
    name = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    out_dir = os.path.join(os.path.abspath(workdir), "infer", name)
    for t in range(n):  # up to 255 tracks (the DAVIS writer stops at the benchmark's 20)
        write_indexed_png(os.path.join(out_dir, "masks", f"{t:05d}.png"), label_maps[t])
    overlays = [overlay(load(t), label_maps[t]) for t in range(n)]
    write_overlay_video(os.path.join(out_dir, "overlay.mp4"), overlays)
    write_gif(os.path.join(out_dir, "overlay.gif"), overlays)
    print(f"{n} frames, {len(kept)} tracks -> {out_dir} (masks/, overlay.mp4, overlay.gif)")
    return out_dir


def _palette() -> np.ndarray:
    from stemseg_jax.io import voc_palette

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
