"""Mapillary Vistas instance PNGs (label = value // 256, instance = value % 256), one record per image.

    <root>/<split>/images/<id>.jpg
    <root>/<split>/instances/<id>.png     (16-bit; or <split>/v1.2/instances/, config key ``instances``)

Labels are the 66 Mapillary v1.2 classes; the category map works on 1-based ids (label + 1, as the
official ``mapillary.yaml``). Default map ``mapillary_to_kitti``: Person -> 2, Car -> 1, riders and
other vehicles -> ignore mask, everything else dropped (spec §7.4). Instance ids are the raw PNG
values. Every PNG is decoded once at load time for the instance list: with 18k large images use
``index_cache`` / ``$STEMSEG_CACHE_DIR`` so that happens once. Images are read at full size (the
official code read copies pre-downscaled to <= 1632 px, spec §7.1); the pipeline resizes anyway.
"""

from __future__ import annotations

import logging
import os

from stemseg_jax import io
from stemseg_jax.data import categories as cats
from stemseg_jax.data.readers import common
from stemseg_jax.data.records import VideoRecord

log = logging.getLogger(__name__)


def _values(path: str) -> list[int]:
    return common.present_values(io.read_label_png(path))


def read(ds_cfg, field: str = "dataset") -> list[VideoRecord]:
    root = common.resolve_root(ds_cfg, field)
    split = str(common.cfg_get(ds_cfg, "split", "training"))
    inst = common.cfg_get(ds_cfg, "instances", "")
    inst_dir = (
        common.resolve_under(root, inst, f"{field}.instances", is_dir=True)
        if inst
        else common.first_existing(
            root, [f"{split}/instances", f"{split}/v1.2/instances"], "Mapillary instance folder", f"{field}.instances"
        )
    )
    images_dir = common.resolve_under(
        root, common.cfg_get(ds_cfg, "images", f"{split}/images"), f"{field}.images", is_dir=True
    )
    cmap = cats.resolve_category_map(
        common.cfg_get(ds_cfg, "category_map", cats.DEFAULT_MAPS["mapillary"]), f"{field}.category_map"
    )
    if common.cfg_get(ds_cfg, "class_agnostic", False):
        cmap = cats.class_agnostic(cmap, cats.MAPILLARY_CATEGORIES)
    keep_empty = bool(common.cfg_get(ds_cfg, "keep_empty", False))
    pngs = sorted(os.path.join(inst_dir, f) for f in os.listdir(inst_dir) if f.endswith(".png"))
    if not pngs:
        raise ValueError(f"Mapillary instance folder {inst_dir} holds no PNGs")
    scans = common.map_files(pngs, _values, common.index_cache_path(ds_cfg, "mapillary", root, split))
    records, skipped = [], 0
    for png, values in zip(pngs, scans):
        image_id = os.path.splitext(os.path.basename(png))[0]
        categories, value_map = {}, {}
        for v in values:
            cat = cats.apply_category(cmap, v // 256 + 1, f"{png} (instance value {v})")
            if cat > 0:
                categories[v] = cat
                value_map[v] = v
            elif cat == cats.IGNORE:
                value_map[v] = -1
        if not categories and not keep_empty:
            skipped += 1
            continue
        path = os.path.join(images_dir, f"{image_id}.jpg")
        h, w = io.image_size(path)
        masks = common.LabelPngMaskSource([png], h, w, value_map, False, png, image_id)
        records.append(VideoRecord(image_id, (path,), h, w, categories, (frozenset(categories),), masks, True, png))
    if skipped:
        log.info("%s: skipped %d images without kept instances", inst_dir, skipped)
    return records
