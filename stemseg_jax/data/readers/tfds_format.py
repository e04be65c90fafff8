"""``format: "tfds"``: a dataset prepared as a tensorflow-datasets builder (array_record shards).

Config keys: ``data_dir`` (the tfds data dir, ``$VARS`` expanded; default ``root``), ``builder`` (default
``stemseg_videos``, the project's packing of any reader's dataset, see ``stemseg_jax.data.tfds_source``
and ``tools/prepare_tfds.py``; or a catalog name, ``davis`` / ``davis/480p`` / ``davis/full_resolution``),
``split`` (default ``train``), optional ``version`` (default: the newest one prepared) and
``frame_cache`` (see below).

Which catalog builders can serve which benchmark (tensorflow-datasets 4.9.10, TensorFlow not installed):

- ``davis`` (Image features only): readable here once prepared with ``--file_format=array_record``.
  It holds the DAVIS-2017 *semi-supervised* annotations (first-frame objects, category-less), not the
  unsupervised ones of the DAVIS'19 benchmark STEm-Seg reports, so it trains a DAVIS model but does not
  reproduce the benchmark's ground truth. Preparing it needs TensorFlow (``tf.io.gfile`` reads the PNGs).
- ``youtube_vis``: its ``tfds.features.Video`` calls ``tf.dtypes.as_dtype`` when it is constructed, so
  even reading ``features.json`` of a prepared copy needs TensorFlow; it also drops the video ids the
  evaluation server needs. Pack the original layout with ``tools/prepare_tfds.py`` instead.
- ``coco``: ``coco/2017`` stores boxes only (no instance masks), ``coco/2017_panoptic`` panoptic PNGs;
  both need TensorFlow to construct (``tf.int64`` in ``_info``). Pack the original JSON instead.

Frames: the training pipeline and the runner decode frames from files (``io.read_image``, OpenCV), so
the stored encoded bytes are written once, unchanged, into a frame cache and ``VideoRecord.frame_paths``
point there: a clip is bit-identical to the one the file reader gives. Masks stay lazy (RLE text or
label PNGs decoded on demand). The cache is ``frame_cache`` if set, else
``$STEMSEG_CACHE_DIR/tfds_frames/<builder>_<split>_<hash>`` when that variable is set, else
``<data_dir>/<builder>/<version>/stemseg_frames/<split>``; an ``index.json`` there, keyed by the
shard files' sizes and times, makes a second load read no shard.

The pipeline options of the packed format (``instance_duplication`` for ytvis / davis, ...) are not
known to this format: set them on the entry (``configs/youtube_vis.py:tfds`` does).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from stemseg_jax import io
from stemseg_jax.data.readers import common
from stemseg_jax.data.records import VideoRecord

BUILDER_NAME = "stemseg_videos"  # the project builder's folder under ``data_dir``
INDEX_VERSION = 1
DAVIS_VOID = 255  # as in the DAVIS reader: void pixels are ignore
_UNSERVED = {
    "youtube_vis": "its tfds.features.Video needs TensorFlow even to be read; pack the YouTube-VIS files with "
    "tools/prepare_tfds.py --format ytvis",
    "coco": "coco/2017 holds no instance masks and every coco config needs TensorFlow; pack the COCO JSON with "
    "tools/prepare_tfds.py --format coco",
}


def lazy_tfds():
    """``tensorflow_datasets``, imported on first use (~1 s; only the tfds format needs it)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # a clear message instead of a bare ModuleNotFoundError
        raise ValueError(f"format 'tfds' needs the tensorflow-datasets package: {e}") from e
    return tfds


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def builder_dir(data_dir: str, builder: str, version: str, field: str) -> str:
    """``<data_dir>/<name>[/<config>]/<version>``; ``builder`` may be ``name``, ``name/config`` or
    ``name/config:version``; without a version the newest prepared one."""
    if ":" in builder:
        builder, version = builder.split(":", 1)
    base = os.path.join(data_dir, *builder.split("/"))
    if not os.path.isdir(base):
        raise FileNotFoundError(f"config field {field}.builder={builder!r}: {base} does not exist (prepare it first)")
    if not version:
        found = [v for v in os.listdir(base) if re.fullmatch(r"\d+\.\d+\.\d+", v)]
        if not found:
            configs = sorted(d for d in os.listdir(base) if not d.startswith("."))
            hint = f"; builder configs there: {configs} (name one as {builder}/<config>)" if configs else ""
            raise FileNotFoundError(f"config field {field}.builder={builder!r}: no prepared version under {base}{hint}")
        version = max(found, key=_version_key)
    path = os.path.join(base, version)
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
        raise FileNotFoundError(f"config field {field}: {path} is not a prepared tfds dataset (no dataset_info.json)")
    return path


def _shard_key(path: str) -> list:
    """Sizes and mtimes of the prepared files: the frame cache's index is rebuilt when they change."""
    key = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            st = os.stat(full)
            key.append([name, st.st_size, st.st_mtime_ns])
    return key


def _cache_dir(ds_cfg, bdir: str, builder: str, split: str) -> str:
    explicit = common.cfg_get(ds_cfg, "frame_cache", "")
    if explicit:
        return io.expand_path(str(explicit), "frame_cache")
    cache_root = os.environ.get("STEMSEG_CACHE_DIR")
    if cache_root:
        digest = hashlib.sha1(f"{bdir}|{split}".encode()).hexdigest()[:12]
        return os.path.join(cache_root, "tfds_frames", f"{builder.replace('/', '_')}_{split}_{digest}")
    return os.path.join(bdir, "stemseg_frames", split)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _extension(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:2] == b"\xff\xd8":
        return ".jpg"
    if data[:2] == b"BM":
        return ".bmp"
    raise ValueError("stored frame is neither PNG, JPEG nor BMP")


def _write_once(path: str, data: bytes) -> None:
    # Atomic writes: a file that exists with the right size is complete (another process may have written it).
    if not (os.path.isfile(path) and os.path.getsize(path) == len(data)):
        io.write_bytes(path, data)


def _stemseg_entry(ex: dict, k: int, cache: str, where: str) -> dict:
    """Index entry of one project-builder example; writes its frames into ``cache``."""
    try:
        ann = json.loads(_text(ex["annotation"]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: field 'annotation' is not JSON: {e}") from e
    frames = list(ex["frames"])
    names = ann.get("frame_names") or [f"{t:05d}{_extension(b)}" for t, b in enumerate(frames)]
    if len(names) != len(frames) or len(ann.get("rles", ())) != len(frames):
        raise ValueError(f"{where}: {len(frames)} frames but {len(names)} frame_names / "
                         f"{len(ann.get('rles', ()))} rles entries")  # fmt: skip
    folder = os.path.join(cache, f"{ann.get('index', k):06d}")
    paths = []
    for t, (name, data) in enumerate(zip(names, frames)):
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"{where}: frame {t} name {name!r} is not a plain file name")
        paths.append(os.path.join(folder, name))
        _write_once(paths[-1], bytes(data))
    instances = ann.get("frame_instances") or [sorted(int(i) for i in r) for r in ann["rles"]]
    return dict(kind="rle", index=int(ann.get("index", k)), name=_text(ex["name"]), height=int(ex["height"]),
                width=int(ex["width"]), is_image=bool(ex["is_image"]), frames=paths, categories=ann["categories"],
                frame_instances=instances, rles=ann["rles"], ignore=ann["ignore"],
                source=ann.get("source", ""))  # fmt: skip


def _davis_entry(ex: dict, k: int, cache: str, where: str) -> dict:
    """Index entry of one catalog ``davis`` example (frames + label PNGs written into ``cache``)."""
    name = _text(ex["metadata"]["video_name"])
    folder = os.path.join(cache, name)
    frames, labels, instances = [], [], []
    height = width = 0
    for t, (image, label) in enumerate(zip(ex["video"]["frames"], ex["video"]["segmentations"])):
        frames.append(os.path.join(folder, f"{t:05d}{_extension(bytes(image))}"))
        _write_once(frames[-1], bytes(image))
        labels.append(os.path.join(folder, f"{t:05d}.label.png"))
        _write_once(labels[-1], bytes(label))
        values = io.read_label_png(labels[-1])
        height, width = values.shape
        instances.append([v for v in common.present_values(values) if v not in (0, DAVIS_VOID)])
    if not frames:
        raise ValueError(f"{where}: video {name!r} has no frames")
    ids = sorted({i for f in instances for i in f})
    return dict(kind="label_png", index=k, name=name, height=height, width=width, is_image=False, frames=frames,
                labels=labels, categories={str(i): 1 for i in ids}, frame_instances=instances,
                source="")  # fmt: skip


def _build_index(bdir: str, split: str, cache: str, field: str) -> list[dict]:
    tfds = lazy_tfds()
    from tensorflow_datasets.core import example_parser  # parses without decoding (no TensorFlow)

    info = common.load_json(os.path.join(bdir, "dataset_info.json"), "tfds dataset info")
    name = info.get("name", "") if isinstance(info, dict) else ""
    # Checked before tfds reads features.json: for these builders that import fails on TensorFlow.
    if name in _UNSERVED:
        raise ValueError(f"config field {field}.builder: the catalog builder {name!r} cannot serve training: "
                         f"{_UNSERVED[name]}")  # fmt: skip
    builder = tfds.builder_from_directory(bdir)
    if split not in builder.info.splits:
        raise ValueError(f"config field {field}.split={split!r}: {bdir} has splits {sorted(builder.info.splits)}")
    features = builder.info.features
    if name == "davis":
        make = _davis_entry
    elif {"name", "frames", "annotation"} <= set(features.keys()):
        make = _stemseg_entry
    else:
        raise ValueError(f"config field {field}.builder: {bdir} ({name}) is neither the project builder "
                         f"{BUILDER_NAME!r} nor a supported catalog builder ('davis')")  # fmt: skip
    # Raw records, parsed with the numpy parser: the frames stay the stored encoded bytes.
    source = builder.as_data_source(split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    parser = example_parser.ExampleParserNp(features.get_serialized_info())
    entries = []
    for k in range(len(source)):
        where = f"{bdir} [{split}] example {k}"
        entries.append(make(parser.parse_example(source[k]), k, cache, where))
    # array_record shards are shuffled by key when written: restore the order of the packed dataset.
    entries.sort(key=lambda e: (e["index"], e["name"]))
    return entries


def _load_index(bdir: str, split: str, cache: str, field: str) -> list[dict]:
    index_path = os.path.join(cache, "index.json")
    key = [INDEX_VERSION, bdir, split, _shard_key(bdir)]
    if os.path.isfile(index_path):
        try:
            with open(index_path) as f:
                stored = json.load(f)
            if stored.get("key") == json.loads(json.dumps(key)):
                return stored["entries"]
        except (OSError, ValueError, AttributeError):
            pass  # unreadable or stale: rebuilt below
    entries = _build_index(bdir, split, cache, field)
    io.write_json(index_path, dict(key=key, entries=entries))
    return entries


def _record(e: dict, source: str) -> VideoRecord:
    name, h, w = e["name"], e["height"], e["width"]
    categories = {int(i): int(c) for i, c in e["categories"].items()}
    paths: Sequence[str] = tuple(e["frames"])
    if e["kind"] == "rle":
        frames = [{int(i): counts for i, counts in r.items()} for r in e["rles"]]
        ignore = [[counts] if counts is not None else [] for counts in e["ignore"]]
        masks: Any = common.RleMaskSource(h, w, frames, ignore, source, name, paths)
    else:
        masks = common.LabelPngMaskSource(e["labels"], h, w, {DAVIS_VOID: -1}, True, source, name)
    instances = tuple(frozenset(int(i) for i in f) for f in e["frame_instances"])
    return VideoRecord(name, paths, h, w, categories, instances, masks, e["is_image"], source)


def read(ds_cfg, field: str = "dataset") -> list[VideoRecord]:
    # ``root`` stands for the data dir when ``data_dir`` is not set: the dataset-root checks made before
    # training (main.check_dataset_paths) then cover tfds entries too.
    raw_dir = common.cfg_get(ds_cfg, "data_dir", "") or common.cfg_get(ds_cfg, "root", "")
    if not raw_dir:
        raise ValueError(f"config field {field}.data_dir is empty (the tfds data dir)")
    data_dir = io.expand_path(str(raw_dir), f"{field}.data_dir")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"config field {field}.data_dir={raw_dir!r}: directory {data_dir} does not exist")
    builder = str(common.cfg_get(ds_cfg, "builder", BUILDER_NAME))
    split = str(common.cfg_get(ds_cfg, "split", "train"))
    bdir = builder_dir(data_dir, builder, str(common.cfg_get(ds_cfg, "version", "")), field)
    cache = _cache_dir(ds_cfg, bdir, builder, split)
    wanted = common.sequence_filter(ds_cfg)
    entries = _load_index(bdir, split, cache, field)
    records = []
    for e in entries:
        if wanted is not None and e["name"] not in wanted:
            continue
        source = f"tfds {bdir} [{split}]" + (f" (packed from {e['source']})" if e["source"] else "")
        common.check_frames_exist(e["frames"], f"{source} (sequence {e['name']!r})")
        records.append(_record(e, source))
    common.check_sequences_found(wanted, [e["name"] for e in entries], field, bdir)
    return records
