"""Writes a contact sheet (PNG) and an animation (GIF) of sampled training clips with masks overlaid.

The way to check a dataset and its config before a long run: the clips come from the real training
pipeline (same sampling, augmentation, resizing, bucketing), starting at any step.

  python tools/show_clips.py --config configs/kitti.py:tiny --config.data.datasets.kitti_mots.root=DIR \\
      --out /tmp/clips --num_batches 2

Each row of the sheet is one clip (its id on the left), each column one frame. Instances are
coloured, ignore regions hatched grey, padding and out-of-frame pixels show as the mean colour.
"""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stemseg_jax.data.pipeline import build_train_iterator  # noqa: E402
from stemseg_jax.io import atomic_write, write_image  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/kitti.py:tiny.")
_OUT = flags.DEFINE_string("out", None, "Output directory for clips.png and clips.gif.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 2, "Batches to draw.")
_START_STEP = flags.DEFINE_integer("start_step", 0, "First training step to show.")
_SEED = flags.DEFINE_integer("seed", None, "Pipeline seed (default: config.seed).")
_SCALE = flags.DEFINE_float("scale", 1.0, "Resize factor for the output images.")
LABEL_WIDTH = 220  # px of the clip-id column of the sheet


def instance_colours(n: int) -> np.ndarray:
    """``[n, 3]`` uint8 BGR colours, evenly spaced hues."""
    hsv = np.stack([np.arange(n) * 180 // max(n, 1), np.full(n, 220), np.full(n, 255)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0]


def overlay_clip(images: np.ndarray, masks: np.ndarray, valid: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """Blends masks into frames.

    Args:
      images: ``[T, H, W, 3]`` uint8 BGR.
      masks: ``[I, T, H, W]`` bool.
      valid: ``[I]`` bool.
      ignore: ``[T, H, W]`` bool.

    Returns:
      ``[T, H, W, 3]`` uint8 BGR with instances tinted and outlined, ignore hatched.
    """
    out = images.astype(np.float32)
    colours = instance_colours(len(masks)).astype(np.float32)
    for i in np.flatnonzero(valid):
        m = masks[i]
        out[m] = 0.45 * out[m] + 0.55 * colours[i]
    hatch = ((np.arange(images.shape[1])[:, None] + np.arange(images.shape[2])[None]) // 4) % 2 == 0
    ign = ignore & hatch[None]
    out[ign] = 0.3 * out[ign] + 0.7 * 160.0
    out = out.astype(np.uint8)
    for t in range(len(out)):
        for i in np.flatnonzero(valid):
            contours, _ = cv2.findContours(masks[i, t].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out[t], contours, -1, tuple(int(c) for c in colours[i]), 1)
    return out


def _label(text: str, height: int) -> np.ndarray:
    panel = np.full((height, LABEL_WIDTH, 3), 255, np.uint8)
    for k, chunk in enumerate(text[i : i + 26] for i in range(0, len(text), 26)):
        cv2.putText(panel, chunk, (4, 16 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def render(batches: list[dict[str, np.ndarray]], scale: float = 1.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Returns the contact sheet ``[H, W, 3]`` and the GIF frames (each ``[H', W', 3]``, BGR)."""
    rows, clips = [], []
    for batch in batches:
        for k in range(len(batch["images"])):
            frames = overlay_clip(batch["images"][k], batch["masks"][k], batch["instance_valid"][k], batch["ignore"][k])
            if scale != 1.0:
                frames = np.stack(
                    [cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for f in frames]
                )
            clips.append((str(batch["clip_ids"][k]), frames))
    width = max(f.shape[2] * f.shape[0] for _, f in clips)
    for cid, frames in clips:
        row = np.concatenate([_label(cid, frames.shape[1])] + list(frames), axis=1)
        rows.append(np.pad(row, ((0, 4), (0, LABEL_WIDTH + width - row.shape[1]), (0, 0)), constant_values=255))
    sheet = np.concatenate(rows, axis=0)
    # GIF: all clips side by side in a grid, one animation frame per clip frame.
    max_h = max(f.shape[1] for _, f in clips)
    max_w = max(f.shape[2] for _, f in clips)
    cols = int(np.ceil(np.sqrt(len(clips))))
    grid_rows = int(np.ceil(len(clips) / cols))
    num_t = clips[0][1].shape[0]
    gif = []
    for t in range(num_t):
        canvas = np.full((grid_rows * max_h, cols * max_w, 3), 255, np.uint8)
        for n, (_, frames) in enumerate(clips):
            r, c = divmod(n, cols)
            canvas[r * max_h : r * max_h + frames.shape[1], c * max_w : c * max_w + frames.shape[2]] = frames[t]
        gif.append(canvas)
    return sheet, gif


def write_gif(path: str, frames: list[np.ndarray], duration_ms: int = 250) -> None:
    """Atomically writes BGR frames as a looping GIF."""
    pil = [Image.fromarray(np.ascontiguousarray(f[..., ::-1])) for f in frames]
    atomic_write(path, lambda tmp: pil[0].save(tmp, save_all=True, append_images=pil[1:], duration=duration_ms, loop=0))


def main(argv):
    del argv
    if not _OUT.value:
        raise app.UsageError("--out is required")
    config = _CONFIG.value
    os.makedirs(_OUT.value, exist_ok=True)
    seed = config.seed if _SEED.value is None else _SEED.value
    it = build_train_iterator(config, seed=seed, start_step=_START_STEP.value, num_workers=0)
    try:
        batches = [next(it) for _ in range(_NUM_BATCHES.value)]
    finally:
        it.close()
    sheet, gif = render(batches, _SCALE.value)
    png_path = os.path.join(_OUT.value, "clips.png")
    write_image(png_path, sheet)
    gif_path = os.path.join(_OUT.value, "clips.gif")
    write_gif(gif_path, gif)
    print(f"wrote {png_path} ({sheet.shape[1]}x{sheet.shape[0]}) and {gif_path}")
    for batch in batches:
        h, w = batch["images"].shape[2:4]
        for cid, valid in zip(batch["clip_ids"], batch["instance_valid"]):
            print(f"  {cid}: {int(valid.sum())} instances, padded frames {w}x{h}")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
