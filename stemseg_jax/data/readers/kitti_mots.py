"""KITTI-MOTS and MOTSChallenge: MOTS text files (or 16-bit instance PNGs) plus frame folders.

KITTI-MOTS layout (format ``kitti_mots``)::

    <root>/training/image_02/<seq>/000000.png ...     (or <root>/images/<seq>/, config key ``images``)
    <root>/instances_txt/<seq>.txt                    (config key ``annotations``)
    <root>/instances/<seq>/000000.png                 (used when there is no instances_txt folder)

MOTSChallenge (format ``mots_challenge``) has the same files, or the MOTS20 layout
``<root>/<split>/MOTS20-02/{img1/000001.jpg, gt/gt.txt}``.

Each text line is ``frame obj_id class_id height width rle``; ``frame`` is the number in the frame's
file name (0-based for KITTI, 1-based for MOTS20), ``obj_id = class_id * 1000 + k``, class 1 = car,
2 = pedestrian, 10 = ignore region (goes into the ignore mask). Other classes, a repeated object id
within a frame, or a mask size that disagrees with the frame are errors naming file and line.

Sequences: config key ``sequences``, else the spec §7.1 split for ``split`` in {train, val}
(``fulltrain``/``all``: every sequence found). ``rename`` ({old: new}) renames sequences, e.g.
MOTSChallenge ``0002`` -> ``0050`` as the official training set does.
"""

from __future__ import annotations

import logging
import os

from stemseg_jax import io
from stemseg_jax.data.categories import KITTI_CATEGORIES, KITTI_IGNORE_CLASS
from stemseg_jax.data.readers import common
from stemseg_jax.data.records import VideoRecord

log = logging.getLogger(__name__)

KITTI_TRAIN = ("0000", "0001", "0003", "0004", "0005", "0009", "0011", "0012", "0015", "0017", "0019", "0020")
KITTI_VAL = ("0002", "0006", "0007", "0008", "0010", "0013", "0014", "0016", "0018")
SPLITS = {"train": KITTI_TRAIN + ("0050",), "val": KITTI_VAL}


def read(ds_cfg, field: str = "dataset", fmt: str = "kitti_mots") -> list[VideoRecord]:
    root = common.resolve_root(ds_cfg, field)
    split = str(common.cfg_get(ds_cfg, "split", ""))
    layout = _find_layout(ds_cfg, root, split, field, fmt)
    wanted = common.sequence_filter(ds_cfg)
    rename = {str(k): str(v) for k, v in dict(common.cfg_get(ds_cfg, "rename", {})).items()}
    available = sorted(layout)
    if wanted is None and fmt == "kitti_mots" and split in SPLITS:
        wanted = {s for s in SPLITS[split] if s in available or rename.get(s, s) in available}
        if not wanted:
            raise ValueError(f"config field {field}.split={split!r}: none of {SPLITS[split]} found under {root}")
    if wanted is not None:
        found = available + [rename.get(s, s) for s in available]
        common.check_sequences_found(wanted, found, field, root)
    records = []
    png_jobs = []
    for seq in available:
        name = rename.get(seq, seq)
        if wanted is not None and seq not in wanted and name not in wanted:
            continue
        frames_dir, ann = layout[seq]
        frames = common.list_frames(frames_dir, f"{field}: sequence {seq!r}")
        if ann.endswith(".txt"):
            records.append(_from_txt(ann, name, frames))
        else:
            png_jobs.append((name, frames, ann))
    if png_jobs:
        records += _from_pngs(png_jobs, ds_cfg, root, split)
    return sorted(records, key=lambda r: r.name)


def _find_layout(ds_cfg, root: str, split: str, field: str, fmt: str) -> dict[str, tuple[str, str]]:
    """seq -> (frame folder, annotation txt file or PNG folder)."""
    mots20 = os.path.join(root, split) if split else root
    if fmt == "mots_challenge" and os.path.isdir(mots20):
        seqs = sorted(d for d in os.listdir(mots20) if os.path.isfile(os.path.join(mots20, d, "gt", "gt.txt")))
        if seqs:
            return {s: (os.path.join(mots20, s, "img1"), os.path.join(mots20, s, "gt", "gt.txt")) for s in seqs}
    img = common.cfg_get(ds_cfg, "images", "")
    images_dir = (
        common.resolve_under(root, img, f"{field}.images", is_dir=True)
        if img
        else common.first_existing(
            root, ["training/image_02", "image_02", "images", "training/images"], "frame folder", f"{field}.images"
        )
    )
    ann = common.cfg_get(ds_cfg, "annotations", "")
    ann_dir = (
        common.resolve_under(root, ann, f"{field}.annotations", is_dir=True)
        if ann
        else common.first_existing(
            root, ["instances_txt", "training/instances_txt", "instances", "training/instances"],
            "MOTS annotation folder (instances_txt or instances)", f"{field}.annotations",
        )
    )  # fmt: skip
    entries = sorted(os.listdir(ann_dir))
    txts = [e for e in entries if e.endswith(".txt")]
    if txts:
        pairs = {os.path.splitext(e)[0]: os.path.join(ann_dir, e) for e in txts}
    else:
        pairs = {e: os.path.join(ann_dir, e) for e in entries if os.path.isdir(os.path.join(ann_dir, e))}
    if not pairs:
        raise ValueError(f"MOTS annotation folder {ann_dir} holds neither <seq>.txt files nor <seq>/ PNG folders")
    return {s: (os.path.join(images_dir, s), a) for s, a in pairs.items()}


def _from_txt(path: str, name: str, frames: list[str]) -> VideoRecord:
    h, w = io.image_size(frames[0])
    index_of = {common.frame_number(f): t for t, f in enumerate(frames)}
    per_frame: list[dict] = [{} for _ in frames]
    ignore: list[list] = [[] for _ in frames]
    categories: dict[int, int] = {}
    lines = io.read_text(path, "{path}:{line}").splitlines()
    if not any(line.strip() for line in lines):
        log.warning("%s: empty annotation file: sequence %r has no objects", path, name)
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{ln}"
        frame, obj, cls, mh, mw, counts = io.parse_mots_line(line, where)
        if frame not in index_of:
            raise ValueError(f"{where}: frame {frame} has no image in {os.path.dirname(frames[0])}")
        t = index_of[frame]
        if (mh, mw) != (h, w):
            raise ValueError(f"{where}: mask size {mh}x{mw} disagrees with frame {frame} of size {h}x{w}")
        # The counts are checked here (run total = h * w), where the line is known, not in a training worker.
        io.checked_rle(counts, h, w, where)
        rle = {"size": [h, w], "counts": counts}
        if cls == KITTI_IGNORE_CLASS:
            ignore[t].append(rle)
            continue
        if cls not in KITTI_CATEGORIES:
            raise ValueError(f"{where}: class {cls} (object {obj}) is not 1 (car), 2 (pedestrian) or 10 (ignore)")
        if obj in per_frame[t]:
            raise ValueError(f"{where}: object {obj} appears twice in frame {frame}")
        if categories.setdefault(obj, cls) != cls:
            raise ValueError(f"{where}: object {obj} changes class from {categories[obj]} to {cls}")
        per_frame[t][obj] = rle
    frame_instances = tuple(frozenset(p) for p in per_frame)
    masks = common.RleMaskSource(h, w, per_frame, ignore, path, name, frames)
    return VideoRecord(name, tuple(frames), h, w, categories, frame_instances, masks, False, path)


def _png_values(path: str) -> list[int]:
    return [v for v in common.present_values(io.read_label_png(path)) if v != 0]


def _from_pngs(jobs, ds_cfg, root: str, split: str) -> list[VideoRecord]:
    plan = []
    for name, frames, ann_dir in jobs:
        pngs = [os.path.join(ann_dir, os.path.splitext(os.path.basename(f))[0] + ".png") for f in frames]
        for t, p in enumerate(pngs):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p}: instance PNG missing for frame {t} of sequence {name!r}")
        plan.append((name, frames, ann_dir, pngs))
    all_pngs = [p for *_, pngs in plan for p in pngs]
    cache = common.index_cache_path(ds_cfg, "kitti_mots_png", root, split)
    values = dict(zip(all_pngs, common.map_files(all_pngs, _png_values, cache)))
    records = []
    for name, frames, ann_dir, pngs in plan:
        h, w = io.image_size(frames[0])
        categories, value_map, frame_instances = {}, {}, []
        for p in pngs:
            present = set()
            for v in values[p]:
                cls = v // 1000
                if cls == KITTI_IGNORE_CLASS:
                    value_map[v] = -1
                elif cls in KITTI_CATEGORIES:
                    categories[v] = cls
                    present.add(v)
                else:
                    raise ValueError(f"{p}: object id {v} has class {cls}, expected 1, 2 or 10")
            frame_instances.append(frozenset(present))
        masks = common.LabelPngMaskSource(pngs, h, w, value_map, True, ann_dir, name)
        records.append(
            VideoRecord(name, tuple(frames), h, w, categories, tuple(frame_instances), masks, False, ann_dir)
        )
    return records
