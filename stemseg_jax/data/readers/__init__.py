"""Readers from each dataset's on-disk format into ``list[VideoRecord]`` (see ``records.py``)."""

from __future__ import annotations

import functools
import logging

from stemseg_jax.data.readers import coco, davis, kitti_mots, mapillary, pascal_voc, stemseg_json, ytvis
from stemseg_jax.data.readers.common import cfg_get
from stemseg_jax.data.records import VideoRecord

log = logging.getLogger(__name__)

READERS = {
    "davis": davis.read,
    "ytvis": ytvis.read,
    "kitti_mots": functools.partial(kitti_mots.read, fmt="kitti_mots"),
    "mots_challenge": functools.partial(kitti_mots.read, fmt="mots_challenge"),
    "coco": coco.read,
    "pascal_voc": pascal_voc.read,
    "mapillary": mapillary.read,
    "stemseg_video_json": stemseg_json.read_video,
    "stemseg_image_json": stemseg_json.read_image,
}


def load_dataset(ds_cfg, field: str = "dataset") -> list[VideoRecord]:
    """Reads one entry of ``config.data.datasets`` (or ``config.data.val_dataset``).

    ``ds_cfg`` has ``format`` (a key of ``READERS``), ``root`` ($VARS expanded), ``split``, ``weight``
    and format-specific optional keys documented in each reader module. ``field`` names the entry in
    error messages (e.g. ``"data.datasets.davis"``). Masks are not decoded here.
    """
    fmt = cfg_get(ds_cfg, "format", "")
    if fmt not in READERS:
        raise ValueError(f"config field {field}.format={fmt!r}: unknown format; expected one of {sorted(READERS)}")
    records = READERS[fmt](ds_cfg, field)
    if not records:
        raise ValueError(f"config field {field}: dataset {cfg_get(ds_cfg, 'root', '')!r} ({fmt}) has no usable records")
    log.info("%s: %d %s from %s", field, len(records), "images" if records[0].is_image else "videos",
             cfg_get(ds_cfg, "root", ""))  # fmt: skip
    return records
