"""COCO instances JSON (polygons or RLE; ``iscrowd`` regions -> ignore mask), one record per image.

    <root>/<split>/*.jpg  (or <root>/images/<split>/, config key ``images``)
    <root>/annotations/instances_<split>.json  (config key ``annotations``)

Instance ids are 1..K per image in annotation order (the COCO annotation id is kept in error
messages). Images left without instances after the category map are skipped (logged) unless
``keep_empty`` is set: they teach nothing to an embedding loss. Optional keys: ``category_map``,
``class_agnostic``, ``keep_empty``, ``min_area`` (drop instances whose annotated area is smaller).
"""

from __future__ import annotations

import logging
import math
import os

from stemseg_jax import io
from stemseg_jax.data import categories as cats
from stemseg_jax.data.readers import common
from stemseg_jax.data.records import VideoRecord

log = logging.getLogger(__name__)


def read(ds_cfg, field: str = "dataset") -> list[VideoRecord]:
    root = common.resolve_root(ds_cfg, field)
    split = str(common.cfg_get(ds_cfg, "split", "train2017"))
    ann = common.cfg_get(ds_cfg, "annotations", "")
    ann_path = (
        common.resolve_under(root, ann, f"{field}.annotations", is_dir=False)
        if ann
        else common.first_existing(
            root, [f"annotations/instances_{split}.json", f"instances_{split}.json"], "COCO annotation JSON",
            f"{field}.annotations",
        )
    )  # fmt: skip
    img = common.cfg_get(ds_cfg, "images", "")
    images_dir = (
        common.resolve_under(root, img, f"{field}.images", is_dir=True)
        if img
        else common.first_existing(root, [split, f"images/{split}"], "COCO image folder", f"{field}.images")
    )
    data = common.load_json(ann_path, "COCO annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise ValueError(f"COCO annotation file {ann_path} needs 'images' and 'annotations' (lists)")
    cmap = cats.resolve_category_map(common.cfg_get(ds_cfg, "category_map", None), f"{field}.category_map")
    if common.cfg_get(ds_cfg, "class_agnostic", False):
        cmap = cats.class_agnostic(cmap, common.category_ids(data, ann_path))
    keep_empty = bool(common.cfg_get(ds_cfg, "keep_empty", False))
    min_area = float(common.cfg_get(ds_cfg, "min_area", 0.0))

    per_image: dict = {}
    images = {}
    for k, im in enumerate(data["images"]):
        image_id, where = common.json_record(im, k, "images", ("id", "file_name", "height", "width"), images, ann_path)
        if not isinstance(im["file_name"], str) or not im["file_name"] or "\0" in im["file_name"]:
            raise ValueError(f"{where}: 'file_name' must be a file name")
        common.require_int(im["height"], where, "height", 1, common.MAX_FRAME_SIDE)
        common.require_int(im["width"], where, "width", 1, common.MAX_FRAME_SIDE)
        images[image_id] = im
        per_image[image_id] = []
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise ValueError(f"{ann_path}: annotations[{k}] must be an object, got {type(a).__name__}")
        image_id = a.get("image_id")
        if not io.is_int(image_id) or image_id not in images:
            raise ValueError(f"{ann_path}: annotation {a.get('id', k)} refers to unknown image_id {image_id!r}")
        per_image[image_id].append(a)

    records, skipped = [], 0
    for image_id, im in images.items():
        h, w = int(im["height"]), int(im["width"])
        name = str(image_id)
        instances, ignore, categories = {}, [], {}
        for a in per_image[image_id]:
            where = f"{ann_path} (image {image_id}, annotation {a.get('id')})"
            if "segmentation" not in a:
                raise ValueError(f"{where}: no 'segmentation'")
            if "category_id" not in a:  # never a default: a missing id silently became category 1
                raise ValueError(f"{where}: has no 'category_id'")
            # Positive: the source ids 0 / -1 would silently mean "drop" / "ignore" (categories.DROP / IGNORE).
            cat = cats.apply_category(cmap, common.require_int(a["category_id"], where, "category_id", 1), where)
            area = a.get("area", 1.0)
            if not (isinstance(area, (int, float)) and not isinstance(area, bool) and math.isfinite(area)):
                raise ValueError(f"{where}: 'area' must be a finite number, got {io.short_repr(area)}")
            if common.iscrowd_flag(a, where) or cat == cats.IGNORE:
                ignore.append(a["segmentation"])
            elif cat != cats.DROP and area >= min_area:
                iid = len(instances) + 1
                instances[iid] = a["segmentation"]
                categories[iid] = cat
        if not instances and not keep_empty:
            skipped += 1
            continue
        path = os.path.join(images_dir, im["file_name"])
        masks = common.RleMaskSource(h, w, [instances], [ignore], ann_path, name, [path])
        records.append(
            VideoRecord(name, (path,), h, w, categories, (frozenset(instances),), masks, True, ann_path)
        )
    if skipped:
        log.info("%s: skipped %d images without instances after the category map", ann_path, skipped)
    return records
