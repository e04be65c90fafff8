"""Readers from each dataset's on-disk format into ``list[VideoRecord]`` (see ``records.py``)."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from stemseg_jax.data.readers import coco, davis, kitti_mots, mapillary, pascal_voc, stemseg_json, tfds_format, ytvis
from stemseg_jax.data.readers.common import cfg_get
from stemseg_jax.data.records import VideoRecord

log = logging.getLogger(__name__)

# Per-dataset pipeline options (keys of a ``config.data.datasets`` entry) and their value for a format
# that declares none.
OPTION_DEFAULTS = {
    "weight": 1.0,
    "split_on_empty_frames": False,  # split records at long empty runs instead of only dropping empty frames
    "instance_duplication": False,  # duplicate single-instance clips (spec §5.4)
    "min_instance_area": 0,  # drop image instances smaller than this (pixels at original size)
    "background_as_ignore": False,  # unannotated pixels are ignore, not background
}


@dataclasses.dataclass(frozen=True)
class Reader:
    """A dataset format: its read function and the ``OPTION_DEFAULTS`` it changes (its official loader's)."""

    read: Callable[..., list[VideoRecord]]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __call__(self, ds_cfg, field: str = "dataset") -> list[VideoRecord]:
        return self.read(ds_cfg, field)


_KITTI = dict(split_on_empty_frames=True)  # spec §5.3
READERS = {
    "davis": Reader(davis.read, dict(instance_duplication=True, background_as_ignore=True)),  # spec §5.4, §4.7
    "ytvis": Reader(ytvis.read, dict(instance_duplication=True)),
    "kitti_mots": Reader(functools.partial(kitti_mots.read, fmt="kitti_mots"), _KITTI),
    "mots_challenge": Reader(functools.partial(kitti_mots.read, fmt="mots_challenge"), _KITTI),
    "coco": Reader(coco.read),
    # Official minimum instance areas (spec §5.5).
    "pascal_voc": Reader(pascal_voc.read, dict(min_instance_area=50)),
    "mapillary": Reader(mapillary.read, dict(min_instance_area=30)),
    # The authors' JSONs carry no format of their own: set the options on the entry (README).
    "stemseg_video_json": Reader(stemseg_json.read_video),
    "stemseg_image_json": Reader(stemseg_json.read_image),
    # A tfds builder's split (tools/prepare_tfds.py packs any format above): the packed format's options
    # are not known here, so the entry sets them (configs/youtube_vis.py:tfds).
    "tfds": Reader(tfds_format.read),
}


def dataset_option(ds_cfg, key: str) -> Any:
    """Option ``key`` of a dataset entry: its own value if set, else its format's default, else ``OPTION_DEFAULTS``."""
    if key in ds_cfg:
        return ds_cfg[key]
    reader = READERS.get(ds_cfg["format"] if "format" in ds_cfg else "")
    if reader is not None and key in reader.defaults:
        return reader.defaults[key]
    return OPTION_DEFAULTS[key]


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
    where = cfg_get(ds_cfg, "root", "") or cfg_get(ds_cfg, "data_dir", "")  # tfds entries have a data_dir
    if not records:
        raise ValueError(f"config field {field}: dataset {where!r} ({fmt}) has no usable records")
    log.info("%s: %d %s from %s", field, len(records), "images" if records[0].is_image else "videos", where)
    return records
