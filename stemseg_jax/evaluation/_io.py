"""Atomic file output and small shared helpers of the evaluation package."""

from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np
from PIL import Image


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Writes ``data`` to ``path`` through a temp file in the same folder and ``os.replace``.

    A crash mid-write leaves either the old file or none, never a truncated one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str, text: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj) -> str:
    return atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, bytes):
        return obj.decode("ascii")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL-VOC colour map used by DAVIS annotations: ``[n, 3] uint8`` (bits of the index spread over RGB)."""
    idx = np.arange(n)
    rgb = np.zeros((n, 3), np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (idx >> (3 * shift + channel)) & 1
            rgb[:, channel] |= bit << (7 - shift)
    return rgb.astype(np.uint8)


def atomic_write_indexed_png(path: str, label_map: np.ndarray) -> str:
    """Saves a ``[H, W] uint8`` index map as a mode-``P`` PNG with the VOC/DAVIS palette."""
    img = Image.fromarray(np.ascontiguousarray(label_map, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def read_index_png(path: str) -> np.ndarray:
    """Reads a PNG as a plain index array, as the DAVIS toolkit does (``np.array(Image.open(path))``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing PNG {path}")
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path}: expected an indexed (P) or single-channel PNG, got mode {img.mode}")
        return np.array(img)


def rle_areas(rles: list) -> np.ndarray:
    """``pycocotools.mask.area`` over any number of RLEs, as ``int64 [N]``.

    pycocotools 2.0.x builds its output with ``np.array((n,), dtype=np.uint8)``, which numpy 2 rejects
    (OverflowError) once a call gets more than 255 RLEs; chunks of 255 avoid that.
    """
    from pycocotools import mask as mask_utils

    rles = list(rles)
    chunks = [np.asarray(mask_utils.area(rles[i : i + 255]), np.int64).reshape(-1) for i in range(0, len(rles), 255)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
