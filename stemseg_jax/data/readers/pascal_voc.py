"""Pascal VOC 2012 instance PNGs (``SegmentationObject``; void 255 -> ignore mask), one record per image.

    <root>/JPEGImages/<id>.jpg
    <root>/SegmentationObject/<id>.png   (indexed: 1..K instance, 0 background, 255 void)
    <root>/SegmentationClass/<id>.png    (indexed: VOC class per pixel; gives each instance's category)
    <root>/ImageSets/Segmentation/<split>.txt

``root`` may also be a VOCdevkit folder holding VOC2012. An instance's category is the most frequent
class under its pixels. Both PNGs are decoded once at load time for the instance list (cache with
``index_cache`` / ``$STEMSEG_CACHE_DIR``). Optional keys: ``category_map``, ``class_agnostic``,
``keep_empty``, ``imageset`` (another split file). SBD's ``.mat`` annotations are not read.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from stemseg_jax import io
from stemseg_jax.data import categories as cats
from stemseg_jax.data.readers import common
from stemseg_jax.data.records import VideoRecord

log = logging.getLogger(__name__)
VOID = 255


def _instance_classes(object_png: str) -> list[list[int]]:
    """[[instance value, VOC class], ...] for one image."""
    class_png = os.path.join(os.path.dirname(os.path.dirname(object_png)), "SegmentationClass",
                             os.path.basename(object_png))  # fmt: skip
    obj = io.read_label_png(object_png)
    cls = io.read_label_png(class_png)
    if obj.shape != cls.shape:
        raise ValueError(f"{object_png}: size {obj.shape} differs from {class_png} {cls.shape}")
    out = []
    for v in np.unique(obj):
        if v in (0, VOID):
            continue
        classes = cls[obj == v]
        classes = classes[(classes != 0) & (classes != VOID)]
        if classes.size == 0:
            raise ValueError(f"{object_png}: instance {int(v)} has no class in {class_png}")
        out.append([int(v), int(np.bincount(classes).argmax())])
    return out


def read(ds_cfg, field: str = "dataset") -> list[VideoRecord]:
    root = common.resolve_root(ds_cfg, field)
    if not os.path.isdir(os.path.join(root, "SegmentationObject")) and os.path.isdir(os.path.join(root, "VOC2012")):
        root = os.path.join(root, "VOC2012")
    split = str(common.cfg_get(ds_cfg, "split", "train"))
    split_file = common.resolve_under(
        root, common.cfg_get(ds_cfg, "imageset", f"ImageSets/Segmentation/{split}.txt"), f"{field}.split", is_dir=False
    )
    with open(split_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise ValueError(f"split file {split_file} is empty")
    cmap = cats.resolve_category_map(common.cfg_get(ds_cfg, "category_map", None), f"{field}.category_map")
    if common.cfg_get(ds_cfg, "class_agnostic", False):
        cmap = cats.class_agnostic(cmap, cats.VOC_CATEGORIES)
    keep_empty = bool(common.cfg_get(ds_cfg, "keep_empty", False))

    obj_pngs = [os.path.join(root, "SegmentationObject", f"{i}.png") for i in ids]
    cache = common.index_cache_path(ds_cfg, "pascal_voc", root, split)
    scans = common.map_files(obj_pngs, _instance_classes, cache)
    records, skipped = [], 0
    for image_id, png, scan in zip(ids, obj_pngs, scans):
        path = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
        categories, value_map = {}, {VOID: -1}
        for value, voc_class in scan:
            cat = cats.apply_category(cmap, voc_class, f"{png} (instance {value})")
            if cat > 0:
                categories[value] = cat
            else:
                value_map[value] = -1 if cat == cats.IGNORE else 0
        if not categories and not keep_empty:
            skipped += 1
            continue
        h, w = io.image_size(path)
        masks = common.LabelPngMaskSource([png], h, w, value_map, True, png, image_id)
        records.append(VideoRecord(image_id, (path,), h, w, categories, (frozenset(categories),), masks, True, png))
    if skipped:
        log.info("%s: skipped %d images without instances after the category map", split_file, skipped)
    return records
