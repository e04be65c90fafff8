"""Helpers shared by the format readers: config access, path checks, frame lists and mask sources.

Mask sources are plain picklable classes (no closures) because the input pipeline ships records to
worker processes.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stemseg_jax import io

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MAX_FRAME_SIDE = 16384  # no frame is larger: a bigger JSON height / width is a corrupt field (and a huge allocation)
MAX_ID = 2**63 - 1  # ids travel as int64 (tfds source, batches)
INDEX_THREADS = 4  # threads of ``map_files``' label-PNG scan


def cfg_get(ds_cfg, key: str, default: Any = None) -> Any:
    """``ds_cfg[key]`` for a ConfigDict or dict, ``default`` when absent or empty."""
    try:
        value = ds_cfg.get(key, default)
    except AttributeError:
        value = getattr(ds_cfg, key, default)
    return default if value is None else value


def resolve_root(ds_cfg, field: str) -> str:
    """Expands ``ds_cfg.root`` and checks that it exists; errors name the field and both spellings."""
    raw = cfg_get(ds_cfg, "root", "")
    if not raw:
        raise ValueError(f"config field {field}.root is empty")
    path = io.expand_path(str(raw), f"{field}.root")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"config field {field}.root={raw!r}: directory {path} does not exist")
    return path


def resolve_under(root: str, value: str, field: str, *, is_dir: bool | None = None) -> str:
    """An existing configured path relative to ``root`` (absolute paths and ``$VARS`` allowed)."""
    expanded = io.expand_vars(str(value), field)
    path = os.path.abspath(expanded if os.path.isabs(expanded) else os.path.join(root, expanded))
    ok = os.path.isdir(path) if is_dir else os.path.isfile(path) if is_dir is False else os.path.exists(path)
    if not ok:
        raise FileNotFoundError(f"config field {field}={value!r}: {path} does not exist")
    return path


def first_existing(root: str, candidates: Sequence[str], what: str, field: str) -> str:
    """The first of ``candidates`` (relative to ``root``) that exists; an error listing all of them otherwise."""
    for c in candidates:
        p = os.path.join(root, c)
        if os.path.exists(p):
            return p
    tried = ", ".join(os.path.join(root, c) for c in candidates)
    raise FileNotFoundError(f"{what} not found (set config field {field} to choose it); tried: {tried}")


def list_frames(directory: str, where: str) -> list[str]:
    """Sorted image files of a frame folder; a frame list with a hole (00000, 00001, 00003) is an error.

    Frames must be named by their number (``00000.jpg``, ``000001.png``): DAVIS, KITTI and
    MOTSChallenge all are. The check catches a partially copied or extracted sequence.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{where}: frame folder {directory} does not exist")
    names = sorted(f for f in os.listdir(directory) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f"{where}: frame folder {directory} holds no images")
    check_contiguous(names, f"{where}: {directory}")
    return [os.path.join(directory, n) for n in names]


def check_frames_exist(paths: Sequence[str], where: str) -> None:
    """A missing frame file is reported when the dataset is read, not in a worker mid-training."""
    for t, p in enumerate(paths):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{where}: frame {t} file {p} does not exist")


def frame_number(name: str) -> int | None:
    m = re.search(r"(\d+)$", os.path.splitext(os.path.basename(name))[0])
    return int(m.group(1)) if m else None


def check_contiguous(names: Sequence[str], where: str) -> None:
    numbers = [frame_number(n) for n in names]
    if any(n is None for n in numbers):
        return  # free-form names (own data): order is the sorted order, holes cannot be detected
    expected = range(numbers[0], numbers[0] + len(numbers))
    for n, e in zip(numbers, expected):
        if n != e:
            raise ValueError(f"{where}: frame list has a hole: frame {e} is missing (next present is {n})")


def map_files(paths: Sequence[str], fn: Callable[[str], Any], cache_file: str | None) -> list[Any]:
    """``[fn(p) for p in paths]`` in threads, with an optional JSON cache keyed by (path, mtime, size).

    Used for the PNG formats, whose instance lists are only known after decoding each label PNG once.
    ``fn`` must return JSON-serialisable values.
    """
    cache: dict[str, Any] = {}
    if cache_file and os.path.isfile(cache_file):
        try:
            with open(cache_file) as f:
                cache = json.load(f)
        except (OSError, json.JSONDecodeError):
            log.warning("ignoring unreadable index cache %s", cache_file)
    keys = []
    for p in paths:
        st = os.stat(p)
        keys.append(f"{p}|{st.st_mtime_ns}|{st.st_size}")
    todo = [i for i, k in enumerate(keys) if k not in cache]
    if todo:
        with concurrent.futures.ThreadPoolExecutor(INDEX_THREADS) as ex:
            for i, result in zip(todo, ex.map(lambda i: fn(paths[i]), todo)):
                cache[keys[i]] = result
        if cache_file:
            io.write_json(cache_file, {k: cache[k] for k in keys})
    return [cache[k] for k in keys]


def index_cache_path(ds_cfg, fmt: str, root: str, split: str) -> str | None:
    """Where ``map_files`` caches this dataset's label-PNG index: ``ds_cfg.index_cache``, else a file under
    ``$STEMSEG_CACHE_DIR`` when that is set, else nowhere (every load scans the PNGs again)."""
    explicit = cfg_get(ds_cfg, "index_cache", "")
    if explicit:
        return io.expand_path(str(explicit), "index_cache")
    cache_dir = os.environ.get("STEMSEG_CACHE_DIR")
    if not cache_dir:
        return None
    digest = hashlib.sha1(f"{fmt}|{root}|{split}".encode()).hexdigest()[:16]
    return os.path.join(cache_dir, "index", f"{fmt}_{split}_{digest}.json")


def where_str(source: str, name: str, frame: int | None = None, frame_path: str | None = None, instance=None) -> str:
    s = f"{source} (sequence {name!r}"
    if frame is not None:
        s += f", frame {frame}"
        if frame_path:
            s += f" [{os.path.basename(frame_path)}]"
    if instance is not None:
        s += f", instance {instance}"
    return s + ")"


class RleMaskSource:
    """Masks stored as per-frame COCO segmentations (RLE dict, bare ``counts`` string or polygons).

    ``frames[t]`` maps instance id -> segmentation for frame ``t``; ``ignore[t]`` lists segmentations
    that form the ignore mask of frame ``t``. Nothing is decoded until ``load``.
    """

    def __init__(
        self,
        height: int,
        width: int,
        frames: Sequence[dict[int, Any]],
        ignore: Sequence[Sequence[Any]],
        source: str,
        name: str,
        frame_paths: Sequence[str] = (),
    ):
        self.height, self.width = height, width
        self.frames, self.ignore = list(frames), list(ignore)
        self.source, self.name, self.frame_paths = source, name, list(frame_paths)

    def _where(self, t, iid=None):
        fp = self.frame_paths[t] if t < len(self.frame_paths) else None
        return where_str(self.source, self.name, t, fp, iid)

    def load(self, frame_indices: Sequence[int], instance_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.height, self.width
        masks = np.zeros((len(instance_ids), len(frame_indices), h, w), bool)
        ignore = np.zeros((len(frame_indices), h, w), bool)
        for j, t in enumerate(frame_indices):
            if not 0 <= t < len(self.frames):
                raise IndexError(f"{self._where(t)}: frame index out of range (0..{len(self.frames) - 1})")
            present = self.frames[t]
            for i, iid in enumerate(instance_ids):
                segm = present.get(iid)
                if segm is not None:
                    masks[i, j] = io.decode_segmentation(segm, h, w, self._where(t, iid))
            for segm in self.ignore[t]:
                ignore[j] |= io.decode_segmentation(segm, h, w, self._where(t, "ignore"))
        return masks, ignore


class LabelPngMaskSource:
    """Masks stored as one label PNG per frame (DAVIS, KITTI-MOTS PNGs, Pascal VOC, Mapillary).

    ``value_map`` sends stored pixel values to instance ids (``-1`` = ignore, ``0`` = background);
    values not in it map to themselves when ``identity`` is true and to background otherwise.
    ``paths[t]`` may be ``None`` for an unannotated frame (all background).
    """

    def __init__(
        self,
        paths: Sequence[str | None],
        height: int,
        width: int,
        value_map: dict[int, int],
        identity: bool,
        source: str,
        name: str,
    ):
        self.paths, self.height, self.width = list(paths), height, width
        self.value_map, self.identity = dict(value_map), identity
        self.source, self.name = source, name

    def instance_ids_of(self, label: np.ndarray) -> np.ndarray:
        """``[H, W]`` stored values -> instance ids (-1 ignore, 0 background) through a lookup table."""
        top = int(label.max(initial=0))
        if label.min(initial=0) < 0:
            raise ValueError(f"{self.source} (sequence {self.name!r}): negative label value")
        lut = np.arange(top + 1, dtype=np.int64) if self.identity else np.zeros(top + 1, np.int64)
        for value, target in self.value_map.items():
            if value <= top:
                lut[value] = target
        return lut[label]

    def load(self, frame_indices: Sequence[int], instance_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.height, self.width
        masks = np.zeros((len(instance_ids), len(frame_indices), h, w), bool)
        ignore = np.zeros((len(frame_indices), h, w), bool)
        for j, t in enumerate(frame_indices):
            path = self.paths[t]
            if path is None:
                continue
            label = io.read_label_png(path)
            if label.shape != (h, w):
                raise ValueError(
                    f"{path} ({self.source}, sequence {self.name!r}, frame {t}): label PNG is "
                    f"{label.shape[0]}x{label.shape[1]}, frames are {h}x{w}"
                )
            ids = self.instance_ids_of(label)
            for i, iid in enumerate(instance_ids):
                masks[i, j] = ids == iid
            ignore[j] = ids == -1
        return masks, ignore


def present_values(label: np.ndarray) -> list[int]:
    """Sorted distinct values of an integer label map (bincount: far faster than ``np.unique`` here)."""
    if label.size == 0:
        return []
    return np.flatnonzero(np.bincount(label.ravel())).tolist()


def load_json(path: str, what: str) -> Any:
    """Reads a JSON annotation file; an empty or malformed file is a clear error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} {path} is empty")
    return io.read_json(path, what)


def require_int(value: Any, where: str, field: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int if it is one (not a bool, float or numeric string) within ``lo..hi``; else a
    ``ValueError`` naming ``where`` and ``field``. A string id that ``int()`` would accept is refused: it
    means the file was written by something else than the format's tools."""
    if not io.is_int(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f" in {lo}..{hi}" if lo is not None and hi is not None and hi < 2**31 else ""
        bounds = bounds or (f" >= {lo}" if lo is not None else "")
        raise ValueError(f"{where}: {field!r} must be an integer{bounds}, got {io.short_repr(value)}")
    return int(value)


def category_ids(data: dict, ann_path: str) -> list[int]:
    """The ``categories[*].id`` of a COCO-style JSON (for ``class_agnostic``), each checked."""
    categories = data.get("categories", [])
    if not isinstance(categories, list):
        raise ValueError(f"{ann_path}: 'categories' must be a list, got {type(categories).__name__}")
    ids = []
    for k, c in enumerate(categories):
        if not isinstance(c, dict) or "id" not in c:
            raise ValueError(f"{ann_path}: categories[{k}] must be an object with an 'id'")
        ids.append(require_int(c["id"], f"{ann_path}: categories[{k}]", "id", 1, MAX_ID))
    return ids


def iscrowd_flag(annotation: dict, where: str) -> bool:
    """An annotation's ``iscrowd`` (default false). Only booleans and 0/1: a truthy ``"no"`` or ``2`` would
    silently turn an instance into an ignore region."""
    crowd = annotation.get("iscrowd", 0)
    if not ((isinstance(crowd, bool) or io.is_int(crowd)) and crowd in (0, 1)):
        raise ValueError(f"{where}: 'iscrowd' must be true, false, 0 or 1, got {io.short_repr(crowd)}")
    return bool(crowd)


def sequence_filter(ds_cfg) -> set[str] | None:
    seqs = cfg_get(ds_cfg, "sequences", None)
    if seqs is None or (not isinstance(seqs, str) and len(seqs) == 0):
        return None
    if isinstance(seqs, str):
        seqs = [s for s in seqs.replace(",", " ").split() if s]
    return {str(s) for s in seqs}


def check_sequences_found(wanted: set[str] | None, found: Sequence[str], field: str, source: str) -> None:
    """No configured sequence found is an error; some missing is a logged skip (e.g. KITTI-MOTS without
    MOTSChallenge's 0050, or a small synthetic set read with the full KITTI split list)."""
    if wanted is None:
        return
    missing = sorted(wanted - set(found))
    if missing and len(missing) == len(wanted):
        raise ValueError(f"config field {field}.sequences: none of {missing} found in {source}")
    if missing:
        log.warning("config field %s.sequences: %s not found in %s; skipped", field, missing, source)


def json_record(item, k: int, kind: str, keys: tuple[str, ...], seen, path: str) -> tuple[int, str]:
    """Checks entry ``k`` of a JSON list ``kind`` ("videos", "images"): an object with ``keys`` and a new integer
    ``id``; returns ``(id, where)``, ``where`` naming the file, the entry and its id for later messages."""
    if not isinstance(item, dict):
        raise ValueError(f"{path}: {kind}[{k}] must be an object, got {type(item).__name__}")
    for key in keys:
        if key not in item:
            raise ValueError(f"{path}: {kind}[{k}] has no {key!r}")
    record_id = require_int(item["id"], f"{path}: {kind}[{k}]", "id", 0, MAX_ID)
    if record_id in seen:
        raise ValueError(f"{path}: {kind}[{k}]: {kind[:-1]} id {record_id} appears twice")
    return record_id, f"{path}: {kind}[{k}] (id {record_id})"
