"""YouTube-VIS (2019 format) JSON: ``videos``, ``annotations`` with per-frame segmentations, ``categories``.

    <root>/<split>/JPEGImages/<video folder>/<frame>.jpg
    <root>/<split>.json   (or <root>/<split>/<split>.json, or config key ``annotations``)

Each annotation's ``segmentations`` has one entry per video frame: a compressed or uncompressed RLE
dict, a polygon list, or ``null`` where the object is absent. ``iscrowd`` annotations go into the
ignore mask. A ``valid``/``test`` JSON without ``annotations`` gives unannotated records (for
inference); a ``train`` split without them is an error. Ids, sizes, ``category_id`` (required) and
``iscrowd`` (``true``/``false``/0/1) must be JSON integers / booleans: a string ``"1"`` is an error, not
a silent conversion. Any video dataset in this format trains without conversion ("your own data").

Optional config keys: ``annotations`` (JSON path), ``images`` (frame root; default
``<split>/JPEGImages``), ``category_map`` (name or dict, see ``categories.py``), ``class_agnostic``,
``sequences`` (video ids or folder names to keep), ``check_files`` (default true: every frame file
must exist when the dataset is read).
"""

from __future__ import annotations

import logging
import math
import numbers
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
    if split == "train" and "annotations" not in data:
        # Taken as unannotated, it would fail much later with a misleading clip-length message.
        raise ValueError(f"YouTube-VIS annotation file {ann_path} has no 'annotations', but the dataset's split "
                         "'train' must be annotated (only valid / test splits may go without, for inference)")
    cmap = cats.resolve_category_map(common.cfg_get(ds_cfg, "category_map", None), f"{field}.category_map")
    if common.cfg_get(ds_cfg, "class_agnostic", False):
        cmap = cats.class_agnostic(cmap, common.category_ids(data, ann_path))
    check_files = bool(common.cfg_get(ds_cfg, "check_files", True))
    return parse(data, ann_path, images_dir, cmap, common.sequence_filter(ds_cfg), field, check_files)


def parse(
    data: dict, ann_path: str, images_dir: str, cmap, wanted, field: str = "dataset", check_files: bool = True
) -> list[VideoRecord]:
    """Records from an already loaded YouTube-VIS dict (shared with the tfds source)."""
    videos = _videos(data, ann_path)
    annotated = "annotations" in data
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{ann_path}: 'annotations' must be a list, got {type(annotations).__name__}")
    per_video: dict = {vid: [] for vid in videos}
    for k, a in enumerate(annotations):
        if not isinstance(a, dict):
            raise ValueError(f"{ann_path}: annotations[{k}] must be an object, got {type(a).__name__}")
        if "video_id" not in a:
            raise ValueError(f"{ann_path}: annotations[{k}] has no 'video_id'")
        vid = common.require_int(a["video_id"], f"{ann_path}: annotations[{k}]", "video_id")
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
        seen_ids: set = set()
        for k, a in enumerate(per_video[vid]):
            aid = k + 1
            if "id" in a:
                aid = common.require_int(a["id"], f"{ann_path} (video {vid})", "id", 0, common.MAX_ID)
            where = f"{ann_path} (video {vid}, annotation {aid})"
            if aid in seen_ids:  # the second would silently overwrite the first's masks
                raise ValueError(f"{where}: annotation id {aid} appears twice in the video")
            seen_ids.add(aid)
            segs, areas, crowd = _checked_annotation(a, n, where)
            # Positive: the source ids 0 / -1 would silently mean "drop" / "ignore" (categories.DROP / IGNORE).
            source_cat = common.require_int(a["category_id"], where, "category_id", 1, common.MAX_ID)
            cat = cats.apply_category(cmap, source_cat, where)
            if crowd or cat == cats.IGNORE:
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


def _videos(data: dict, ann_path: str) -> dict:
    """``{video id: entry}`` with every field the reader uses checked."""
    if not isinstance(data["videos"], list):
        raise ValueError(f"{ann_path}: 'videos' must be a list, got {type(data['videos']).__name__}")
    videos = {}
    for k, v in enumerate(data["videos"]):
        vid, where = common.json_record(v, k, "videos", ("id", "file_names", "height", "width"), videos, ann_path)
        names = v["file_names"]
        if not (isinstance(names, list) and names and all(isinstance(f, str) and f and "\0" not in f for f in names)):
            raise ValueError(f"{where}: 'file_names' must be a non-empty list of file names")
        common.require_int(v["height"], where, "height", 1, common.MAX_FRAME_SIDE)
        common.require_int(v["width"], where, "width", 1, common.MAX_FRAME_SIDE)
        videos[vid] = v
    return videos


def _checked_annotation(a: dict, n: int, where: str) -> tuple[list, list, bool]:
    """``(segmentations, areas, iscrowd)`` of one annotation after checking their types (masks are
    decoded, and their RLEs checked, when loaded)."""
    if "category_id" not in a:  # never a default: a missing id silently became category 1
        raise ValueError(f"{where}: has no 'category_id'")
    segs = a.get("segmentations")
    if segs is None:
        raise ValueError(f"{where}: no 'segmentations'")
    if not isinstance(segs, list):  # a string of the video's length would be read as n bare RLE strings
        raise ValueError(f"{where}: 'segmentations' must be a list (one per frame), got {type(segs).__name__}")
    if len(segs) != n:
        raise ValueError(f"{where}: {len(segs)} segmentations for a video of {n} frames")
    for t, s in enumerate(segs):
        if s is not None and not isinstance(s, (dict, list, str)):
            raise ValueError(f"{where}: segmentations[{t}] must be an RLE dict, a polygon list or null, "
                             f"got {type(s).__name__}")  # fmt: skip
    areas = a.get("areas")
    if areas is None or areas == []:
        areas = [None] * n
    if not isinstance(areas, list) or not all(
        x is None or (isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) and x >= 0)
        for x in areas
    ):
        raise ValueError(f"{where}: 'areas' must be a list of non-negative numbers or nulls")
    return segs, areas, common.iscrowd_flag(a, where)

