"""The authors' preprocessed JSON files (spec §7.2-7.3), for users who already have them.

Formats ``stemseg_video_json`` (davis_train.json, youtube_vis_train.json, kittimots_train.json, ...)
and ``stemseg_image_json`` (coco.json, pascal_voc.json, mapillary.json). ``root`` is the image base
directory the JSON's relative paths start from; ``annotations`` (required) is the JSON file, relative
to root or absolute (``$STEMSEG_JSON_ANNOTATIONS_DIR/davis_train.json`` works).

Optional keys: ``ignore_categories`` (categories whose masks form the ignore mask: ``(3,)`` for the
KITTI-MOTS JSONs, whose category 3 is the ignore region), ``category_map``, ``class_agnostic``,
``sequences``. Unlike the official parser, every sequence is checked (not only the first): an
instance in ``segmentations`` without a category, or a frame count that disagrees with
``image_paths``, is an error naming the sequence and frame.
"""

from __future__ import annotations

import logging
import os

from stemseg_jax.data import categories as cats
from stemseg_jax.data.readers import common
from stemseg_jax.data.records import EmptyMaskSource, VideoRecord

log = logging.getLogger(__name__)


def _setup(ds_cfg, field: str):
    root = common.resolve_root(ds_cfg, field)
    ann = common.cfg_get(ds_cfg, "annotations", "")
    if not ann:
        raise ValueError(f"config field {field}.annotations must name the JSON file (e.g. davis_train.json)")
    path = common.resolve_under(root, ann, f"{field}.annotations", is_dir=False)
    data = common.load_json(path, "STEm-Seg JSON")
    cmap = cats.resolve_category_map(common.cfg_get(ds_cfg, "category_map", None), f"{field}.category_map")
    labels = ((data.get("meta") or {}).get("category_labels") or {}) if isinstance(data, dict) else {}
    if common.cfg_get(ds_cfg, "class_agnostic", False):
        cmap = cats.class_agnostic(cmap, [int(k) for k in labels])
    ignore_cats = {int(c) for c in common.cfg_get(ds_cfg, "ignore_categories", ())}
    return root, path, data, cmap, ignore_cats


def _target(cmap, ignore_cats, category: int, where: str) -> int:
    if category in ignore_cats:
        return cats.IGNORE
    return cats.apply_category(cmap, category, where)


def read_video(ds_cfg, field: str = "dataset") -> list[VideoRecord]:
    root, path, data, cmap, ignore_cats = _setup(ds_cfg, field)
    seqs = data.get("sequences") if isinstance(data, dict) else None
    if not seqs:
        raise ValueError(f"STEm-Seg video JSON {path} has no 'sequences'")
    wanted = common.sequence_filter(ds_cfg)
    records, names = [], []
    for k, s in enumerate(seqs):
        for key in ("id", "height", "width", "image_paths"):
            if key not in s:
                raise ValueError(f"{path}: sequences[{k}] has no {key!r}")
        name = str(s["id"])
        names.append(name)
        if wanted is not None and name not in wanted:
            continue
        h, w = int(s["height"]), int(s["width"])
        frame_paths = tuple(os.path.join(root, p) for p in s["image_paths"])
        n = len(frame_paths)
        if common.cfg_get(ds_cfg, "check_files", True):
            common.check_frames_exist(frame_paths, f"{path} (sequence {name!r})")
        if "segmentations" not in s:
            records.append(VideoRecord(name, frame_paths, h, w, {}, (frozenset(),) * n, EmptyMaskSource(h, w),
                                       False, path))  # fmt: skip
            continue
        segs = s["segmentations"]
        if len(segs) != n:
            raise ValueError(f"{path} (sequence {name!r}): {len(segs)} segmentation entries for {n} image_paths")
        raw_cats = {int(i): int(c) for i, c in (s.get("categories") or {}).items()}
        targets = {
            i: _target(cmap, ignore_cats, c, common.where_str(path, name, instance=i)) for i, c in raw_cats.items()
        }
        frames: list[dict] = [{} for _ in range(n)]
        ignore: list[list] = [[] for _ in range(n)]
        for t, per_frame in enumerate(segs):
            for iid_str, counts in per_frame.items():
                iid = int(iid_str)
                if iid not in targets:
                    where = common.where_str(path, name, t, frame_paths[t], iid)
                    raise ValueError(f"{where}: instance has a mask but no entry in 'categories'")
                if targets[iid] == cats.IGNORE:
                    ignore[t].append(counts)
                elif targets[iid] != cats.DROP:
                    frames[t][iid] = counts
        categories = {i: c for i, c in targets.items() if c > 0}
        masks = common.RleMaskSource(h, w, frames, ignore, path, name, frame_paths)
        records.append(
            VideoRecord(name, frame_paths, h, w, categories, tuple(frozenset(f) for f in frames), masks, False, path)
        )
    common.check_sequences_found(wanted, names, field, path)
    return records


def read_image(ds_cfg, field: str = "dataset") -> list[VideoRecord]:
    root, path, data, cmap, ignore_cats = _setup(ds_cfg, field)
    images = data.get("images") if isinstance(data, dict) else None
    if not images:
        raise ValueError(f"STEm-Seg image JSON {path} has no 'images'")
    records, skipped = [], 0
    for k, im in enumerate(images):
        for key in ("height", "width", "image_path", "categories", "segmentations"):
            if key not in im:
                raise ValueError(f"{path}: images[{k}] has no {key!r}")
        name = f"{k}:{os.path.splitext(os.path.basename(im['image_path']))[0]}"
        h, w = int(im["height"]), int(im["width"])
        if len(im["categories"]) != len(im["segmentations"]):
            raise ValueError(f"{path}: images[{k}] has {len(im['categories'])} categories but "
                             f"{len(im['segmentations'])} segmentations")  # fmt: skip
        instances, ignore, categories = {}, [], {}
        if im.get("ignore"):
            ignore.append(im["ignore"])
        for j, (c, counts) in enumerate(zip(im["categories"], im["segmentations"])):
            t = _target(cmap, ignore_cats, int(c), f"{path} (images[{k}], instance {j + 1})")
            if t == cats.IGNORE:
                ignore.append(counts)
            elif t > 0:
                instances[j + 1] = counts
                categories[j + 1] = t
        if not instances:
            skipped += 1
            continue
        fp = os.path.join(root, im["image_path"])
        masks = common.RleMaskSource(h, w, [instances], [ignore], path, name, [fp])
        records.append(VideoRecord(name, (fp,), h, w, categories, (frozenset(instances),), masks, True, path))
    if skipped:
        log.info("%s: skipped %d images without instances", path, skipped)
    return records
