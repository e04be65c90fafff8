"""YouTube-VIS (2019 format) JSON: ``videos``, ``annotations`` with per-frame segmentations, ``categories``.

    <root>/<split>/JPEGImages/<video folder>/<frame>.jpg
    <root>/<split>.json   (or <root>/<split>/<split>.json, or config key ``annotations``)

Each annotation's ``segmentations`` has one entry per video frame: a compressed or uncompressed RLE
dict, a polygon list, or ``null`` where the object is absent. ``iscrowd`` annotations go into the
ignore mask. A ``valid``/``test`` JSON without ``annotations`` gives unannotated records (for
inference). Any video dataset in this format trains without conversion ("your own data").

Optional config keys: ``annotations`` (JSON path), ``images`` (frame root; default
``<split>/JPEGImages``), ``category_map`` (name or dict, see ``categories.py``), ``class_agnostic``,
``sequences`` (video ids or folder names to keep), ``check_files`` (default true: every frame file
must exist when the dataset is read).
"""

from __future__ import annotations

import logging
import os

from stemseg_jax.data import categories as cats
from stemseg_jax.data.readers import common
from stemseg_jax.data.records import EmptyMaskSource, VideoRecord

log = logging.getLogger(__name__)


def read(ds_cfg, field: str = "dataset") -> list[VideoRecord]:
    root = common.resolve_root(ds_cfg, field)
    split = str(common.cfg_get(ds_cfg, "split", "train"))
    ann = common.cfg_get(ds_cfg, "annotations", "")
    ann_path = (
        common.resolve_under(root, ann, f"{field}.annotations", is_dir=False)
        if ann
        else common.first_existing(
            root, [f"{split}.json", f"{split}/{split}.json", f"annotations/{split}.json"],
            "YouTube-VIS annotation JSON", f"{field}.annotations",
        )
    )  # fmt: skip
    img = common.cfg_get(ds_cfg, "images", "")
    images_dir = (
        common.resolve_under(root, img, f"{field}.images", is_dir=True)
        if img
        else common.first_existing(root, [f"{split}/JPEGImages", "JPEGImages"], "frame folder", f"{field}.images")
    )
    data = common.load_json(ann_path, "YouTube-VIS annotation file")
    if not isinstance(data, dict) or not data.get("videos"):
        raise ValueError(f"YouTube-VIS annotation file {ann_path} has no 'videos'")
    cmap = cats.resolve_category_map(common.cfg_get(ds_cfg, "category_map", None), f"{field}.category_map")
    if common.cfg_get(ds_cfg, "class_agnostic", False):
        cmap = cats.class_agnostic(cmap, [c["id"] for c in data.get("categories", [])])
    check_files = bool(common.cfg_get(ds_cfg, "check_files", True))
    return parse(data, ann_path, images_dir, cmap, common.sequence_filter(ds_cfg), field, check_files)


def parse(
    data: dict, ann_path: str, images_dir: str, cmap, wanted, field: str = "dataset", check_files: bool = True
) -> list[VideoRecord]:
    """Records from an already loaded YouTube-VIS dict (shared with the tfds source)."""
    videos = {}
    for k, v in enumerate(data["videos"]):
        for key in ("id", "file_names", "height", "width"):
            if key not in v:
                raise ValueError(f"{ann_path}: videos[{k}] has no {key!r}")
        videos[v["id"]] = v
    annotated = "annotations" in data
    per_video: dict = {vid: [] for vid in videos}
    for k, a in enumerate(data.get("annotations", [])):
        vid = a.get("video_id")
        if vid not in videos:
            raise ValueError(f"{ann_path}: annotation {a.get('id', k)} refers to unknown video_id {vid}")
        per_video[vid].append(a)

    records = []
    names_seen = []
    for vid, v in videos.items():
        folder = os.path.dirname(v["file_names"][0])
        names_seen += [str(vid), folder]
        if wanted is not None and str(vid) not in wanted and folder not in wanted:
            continue
        h, w, n = int(v["height"]), int(v["width"]), len(v["file_names"])
        frame_paths = tuple(os.path.join(images_dir, f) for f in v["file_names"])
        if check_files:
            common.check_frames_exist(frame_paths, f"{ann_path} (video {vid})")
        name = str(vid)
        frames: list[dict] = [{} for _ in range(n)]
        ignore: list[list] = [[] for _ in range(n)]
        categories = {}
        for k, a in enumerate(per_video[vid]):
            aid = a.get("id", k + 1)
            segs = a.get("segmentations")
            where = f"{ann_path} (video {vid}, annotation {aid})"
            if segs is None:
                raise ValueError(f"{where}: no 'segmentations'")
            if len(segs) != n:
                raise ValueError(f"{where}: {len(segs)} segmentations for a video of {n} frames")
            cat = cats.apply_category(cmap, int(a.get("category_id", 1)), where)
            areas = a.get("areas") or [None] * n
            if a.get("iscrowd", 0) or cat == cats.IGNORE:
                for t, s in enumerate(segs):
                    if s is not None:
                        ignore[t].append(s)
                continue
            if cat == cats.DROP:
                continue
            categories[aid] = cat
            for t, s in enumerate(segs):
                # An explicit zero area marks an empty mask: the object is not visible in that frame.
                if s is not None and (t >= len(areas) or areas[t] is None or areas[t] > 0):
                    frames[t][aid] = s
        frame_instances = tuple(frozenset(f) for f in frames)
        if annotated:
            masks = common.RleMaskSource(h, w, frames, ignore, ann_path, name, frame_paths)
        else:
            masks = EmptyMaskSource(h, w)
        records.append(VideoRecord(name, frame_paths, h, w, categories, frame_instances, masks, False, ann_path))
    common.check_sequences_found(wanted, names_seen, field, ann_path)
    return records
