"""YouTube-VIS 2019 AP / AR, reproducing the official ``ytvoseval`` (youtubevos/cocoapi).

The official evaluator does not run on numpy >= 1.18. As evaluation_protocols.md §2.4 found, a thin
subclass of pycocotools' ``COCOeval`` gives its numbers exactly: videos take the place of images,
(video, category) buckets hold one record per track with its mean per-frame area as ``area``, and
``computeIoU`` is the spatio-temporal IoU. ``evaluateImg``, ``accumulate`` and ``summarize`` are
pycocotools' own code, so matching, area ranges and averaging are the benchmark's.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import os
import time

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from stemseg_jax.io import checked_rle, is_int, read_json, rle_areas, segmentation_rle, short_repr

# ytvoseval's area ranges (on the mean per-frame area), not COCO's 32^2 / 96^2.
AREA_RANGES = [[0**2, 1e5**2], [0**2, 128**2], [128**2, 256**2], [256**2, 1e5**2]]
STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def _load_json(obj, what: str):
    if isinstance(obj, (str, os.PathLike)):
        if not os.path.isfile(obj):
            raise FileNotFoundError(f"YouTube-VIS {what} file not found: {obj}")
        return read_json(str(obj), f"YouTube-VIS {what} file")
    return obj


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def gt_metadata(data, src: str) -> tuple[dict, dict]:
    """``({video id: {height, width, length, name}}, {category id: name})`` of a GT dict, every field checked
    (a ``ValueError`` naming ``src``, the entry and the field). Annotations are not needed."""
    if not isinstance(data, dict):
        raise ValueError(f"{src}: expected a JSON object with 'videos' and 'categories'")
    for key in ("videos", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{src}: missing field {key!r}" if key not in data else f"{src}: {key!r} must be a list")
    videos = {}
    for k, v in enumerate(data["videos"]):
        where = f"{src}: videos[{k}]"
        if not isinstance(v, dict) or not all(key in v for key in ("id", "height", "width")):
            raise ValueError(f"{where}: expected an object with 'id', 'height' and 'width'")
        names = v.get("file_names")
        if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError(f"{where}: 'file_names' must be a list of names")
        length = v.get("length", len(names or []))
        for key, value, lo in (("id", v["id"], None), ("height", v["height"], 1), ("width", v["width"], 1),
                               ("length", length, 0)):  # fmt: skip
            if not is_int(value) or (lo is not None and value < lo):
                bound = f" >= {lo}" if lo is not None else ""
                raise ValueError(f"{where}: {key!r} must be an integer{bound}, got {short_repr(value)}")
        videos[int(v["id"])] = {"height": int(v["height"]), "width": int(v["width"]), "length": int(length),
                                "name": os.path.dirname(names[0]) if names else str(v["id"])}
    categories = {}
    for k, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not is_int(c.get("id")):
            raise ValueError(f"{src}: categories[{k}]: expected an object with an integer 'id'")
        categories[int(c["id"])] = c.get("name", str(c["id"]))
    return videos, categories


def _avg_area(areas) -> float:
    nonzero = [a for a in areas if a]
    return float(np.mean(nonzero)) if nonzero else 0.0


def load_gt(gt_json) -> dict:
    """Parses a YouTube-VIS GT JSON (path or dict) into videos, categories and per-track records.

    Per-frame GT segmentations may be polygons, uncompressed or compressed RLE, or null.
    ``avg_area`` comes from the JSON's ``areas`` field as the official tool computes it (masks if absent).
    """
    src = gt_json if isinstance(gt_json, str) else "<ground truth>"
    data = _load_json(gt_json, "ground truth")
    if isinstance(data, dict) and "annotations" not in data:
        raise ValueError(f"{src}: missing field 'annotations'")
    videos, categories = gt_metadata(data, src)
    if not isinstance(data["annotations"], list):
        raise ValueError(f"{src}: 'annotations' must be a list")
    tracks = []
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or not all(key in a for key in ("id", "video_id", "category_id", "segmentations")):
            raise ValueError(f"{src}: annotations[{k}]: expected an object with 'id', 'video_id', 'category_id' "
                             "and 'segmentations'")  # fmt: skip
        if not is_int(a["id"]):
            raise ValueError(f"{src}: annotations[{k}]: 'id' must be an integer, got {short_repr(a['id'])}")
        where = f"{src}: annotation {a['id']}"
        for key in ("video_id", "category_id"):
            if not is_int(a[key]):
                raise ValueError(f"{where}: {key!r} must be an integer, got {short_repr(a[key])}")
        vid = int(a["video_id"])
        if vid not in videos:
            raise ValueError(f"{src}: annotation {a.get('id')} refers to unknown video {vid}")
        where = f"{where} (video {vid})"
        crowd = a.get("iscrowd", 0)
        if not ((isinstance(crowd, bool) or is_int(crowd)) and crowd in (0, 1)):
            raise ValueError(f"{where}: 'iscrowd' must be true, false, 0 or 1, got {short_repr(crowd)}")
        if not isinstance(a["segmentations"], list):
            raise ValueError(f"{where}: 'segmentations' must be a list (one per frame)")
        h, w = videos[vid]["height"], videos[vid]["width"]
        # Polygons, uncompressed or compressed RLE, or null; every RLE checked before pycocotools sees it.
        rles = [segmentation_rle(seg, h, w, f"{where}, frame {t}") if seg else None
                for t, seg in enumerate(a["segmentations"])]  # fmt: skip
        areas = a.get("areas")
        if areas is None:
            areas = [int(mask_utils.area(r)) if r is not None else None for r in rles]
        elif not isinstance(areas, list) or not all(x is None or (_is_number(x) and x >= 0) for x in areas):
            raise ValueError(f"{where}: 'areas' must be a list of non-negative numbers or nulls")
        tracks.append({
            "id": int(a["id"]), "image_id": vid, "category_id": int(a["category_id"]),
            "iscrowd": int(crowd), "area": _avg_area(areas), "rles": rles,
        })
    return {"videos": videos, "categories": categories, "tracks": tracks, "source": src}


def load_results(results_json, gt: dict) -> list[dict]:
    """Parses and validates predictions against the GT metadata; ids 1..N in file order (as ``loadRes``)."""
    src = results_json if isinstance(results_json, str) else "<results>"
    data = _load_json(results_json, "results")
    if not isinstance(data, list):
        raise ValueError(f"{src}: expected a JSON list of results")
    out = []
    for i, r in enumerate(data):
        problems, rles = result_problems(i, r, gt["videos"], gt["categories"], src)
        if problems:
            raise ValueError(problems[0])
        areas = _rle_areas(rles)
        out.append({"id": i + 1, "image_id": int(r["video_id"]), "category_id": int(r["category_id"]),
                    "score": float(r["score"]), "iscrowd": 0, "area": _avg_area(areas), "rles": rles})
    return out


def result_problems(i: int, r, videos: dict, categories, src: str, compressed_only: bool = False):
    """``(problems, rles)`` of result ``i``: what is wrong with it (empty = valid; each names ``src``, the result,
    the video, the frame and the field) and its per-frame pycocotools RLEs (``None`` for an absent frame).

    Shared by scoring (which stops at the first problem) and ``--check`` (which lists them all;
    ``compressed_only``: the server takes compressed ``counts`` strings only). Every RLE's size and run total
    are checked here: pycocotools would loop for minutes on one that covers more pixels than its frame, and
    score a smaller mask's RLE with the right ``size`` as a silently wrong mask.
    """
    where = f"{src}: result {i}"
    if not isinstance(r, dict):
        return [f"{where}: not a JSON object"], None
    missing = {"video_id", "category_id", "score", "segmentations"} - set(r)
    if missing:
        return [f"{where} lacks {sorted(missing)}"], None
    if not is_int(r["video_id"]):
        return [f"{where}: 'video_id' must be an integer, got {short_repr(r['video_id'])}"], None
    vid = int(r["video_id"])
    if vid not in videos:
        return [f"{where} is for unknown video {vid}"], None
    where = f"{where} (video {vid})"
    problems = []
    if not is_int(r["category_id"]):
        problems.append(f"{where}: 'category_id' must be an integer, got {short_repr(r['category_id'])}")
    elif int(r["category_id"]) not in categories:
        problems.append(f"{where} has unknown category {r['category_id']}")
    if not _is_number(r["score"]):
        problems.append(f"{where}: 'score' must be a finite number, got {short_repr(r['score'])}")
    segs = r["segmentations"]
    if not isinstance(segs, list):
        problems.append(f"{where}: 'segmentations' must be a list (one RLE or null per frame), got {short_repr(segs)}")
        return problems, None
    v = videos[vid]
    if len(segs) != v["length"]:
        problems.append(f"{where} has {len(segs)} frames, the video has {v['length']}")
    h, w = v["height"], v["width"]
    rles = []
    for t, seg in enumerate(segs):
        if seg is None:
            rles.append(None)
            continue
        at = f"{where}, frame {t}"
        if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
            problems.append(f"{at}: not an RLE dict {{size, counts}}")
        elif isinstance(seg["size"], list) and all(is_int(x) for x in seg["size"]) and seg["size"] != [h, w]:
            problems.append(f"{at}: mask size {seg['size']} differs from the video's {[h, w]}")
        elif compressed_only and not isinstance(seg["counts"], str):
            problems.append(f"{at}: counts must be a compressed RLE string")
        else:
            try:
                rles.append(checked_rle(seg, h, w, at))
                continue
            except ValueError as err:
                problems.append(str(err))
        rles.append(None)
    return problems, rles


def _rle_areas(rles: list) -> list:
    present = [r for r in rles if r is not None]
    areas = iter(rle_areas(present).tolist())
    return [next(areas) if r is not None else None for r in rles]


def tube_iou(dts: list[list], gts: list[list]) -> np.ndarray:
    """Spatio-temporal IoU ``[len(dts), len(gts)]``: sum over frames of intersections / sum of unions.

    Each element of ``dts`` / ``gts`` is a per-frame list of RLEs or None. Frames where only one side has a
    mask add its area to the union; a zero union gives 0 (the official rule). The per-frame intersections of
    all pairs come from one pycocotools call (crowd IoU times the prediction's area, rounded: exact integers).
    """
    nd, ng = len(dts), len(gts)
    inter = np.zeros((nd, ng))
    area_d = np.zeros(nd)
    area_g = np.zeros(ng)
    n_frames = max([len(s) for s in dts + gts], default=0)
    for t in range(n_frames):
        di = [i for i, s in enumerate(dts) if t < len(s) and s[t] is not None]
        gi = [j for j, s in enumerate(gts) if t < len(s) and s[t] is not None]
        d_rles = [dts[i][t] for i in di]
        g_rles = [gts[j][t] for j in gi]
        ad = rle_areas(d_rles).astype(np.float64) if di else np.zeros(0)
        ag = rle_areas(g_rles).astype(np.float64) if gi else np.zeros(0)
        area_d[di] += ad
        area_g[gi] += ag
        if di and gi:
            ioa = np.asarray(mask_utils.iou(d_rles, g_rles, [1] * len(gi)), np.float64).reshape(len(di), len(gi))
            frame_inter = np.where(ad[:, None] > 0, np.rint(ioa * ad[:, None]), 0.0)
            inter[np.ix_(di, gi)] += frame_inter
    union = area_d[:, None] + area_g[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class YTVISeval(COCOeval):
    """``COCOeval`` over videos: buckets are (video, category), IoU is the tube IoU."""

    def __init__(self, gt: dict, dts: list[dict]):
        super().__init__(None, None, iouType="segm")
        self._gt_tracks = gt["tracks"]
        self._dt_tracks = dts
        self.params.imgIds = sorted(gt["videos"])
        self.params.catIds = sorted(gt["categories"])
        self.params.areaRng = AREA_RANGES
        self.iou_seconds = 0.0

    def _prepare(self):
        from collections import defaultdict

        self._gts = defaultdict(list)
        self._dts = defaultdict(list)
        for g in self._gt_tracks:
            g = dict(g, ignore=int(g["iscrowd"]))
            self._gts[g["image_id"], g["category_id"]].append(g)
        for d in self._dt_tracks:
            self._dts[d["image_id"], d["category_id"]].append(dict(d))
        self.evalImgs = defaultdict(list)
        self.eval = {}

    def computeIoU(self, imgId, catId):  # noqa: N802 (pycocotools' name)
        gt = self._gts[imgId, catId]
        dt = self._dts[imgId, catId]
        if len(gt) == 0 and len(dt) == 0:
            return []
        start = time.perf_counter()
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: self.params.maxDets[-1]]
        ious = tube_iou([d["rles"] for d in dt], [g["rles"] for g in gt])
        self.iou_seconds += time.perf_counter() - start
        return ious


def evaluate_ytvis(gt_json, results_json) -> dict:
    """YouTube-VIS 2019 AP@[.5:.95], AP50, AP75, APs/m/l, AR1, AR10, AR100, ARs/m/l.

    Args:
      gt_json: GT JSON path or dict (videos, annotations, categories).
      results_json: results JSON path or list (``{video_id, category_id, score, segmentations}``).
    Returns:
      ``{"benchmark": "ytvis", "stats": {name: value}, "per_category_AP": {name: AP or None},
      "num_videos", "num_results", "num_frames", "timings" (seconds per stage), "seconds"}``; values in
      [0, 1], -1 where undefined (pycocotools' rule). A perfect AP is 1 - 2e-16: pycocotools' precision
      is tp / (tp + fp + eps), as in ytvoseval.
    """
    start = time.perf_counter()
    gt = load_gt(gt_json)
    dts = load_results(results_json, gt)
    t_loaded = time.perf_counter()
    ev = YTVISeval(gt, dts)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    t_done = time.perf_counter()
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    per_cat = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        per_cat[gt["categories"][cat]] = float(np.mean(p[p > -1])) if (p > -1).any() else None
    return {
        "benchmark": "ytvis",
        "stats": {n: float(v) for n, v in zip(STAT_NAMES, ev.stats)},
        "per_category_AP": per_cat,
        "num_videos": len(gt["videos"]),
        "num_results": len(dts),
        "num_frames": sum(v["length"] for v in gt["videos"].values()),
        "timings": {"load_and_validate": t_loaded - start, "tube_iou": ev.iou_seconds,
                    "cocoeval_match_accumulate": t_done - t_loaded - ev.iou_seconds},
        "seconds": time.perf_counter() - start,
    }


_LINES = [
    ("Average Precision", "AP", "0.50:0.95", "all", 100), ("Average Precision", "AP", "0.50", "all", 100),
    ("Average Precision", "AP", "0.75", "all", 100), ("Average Precision", "AP", "0.50:0.95", "small", 100),
    ("Average Precision", "AP", "0.50:0.95", "medium", 100), ("Average Precision", "AP", "0.50:0.95", "large", 100),
    ("Average Recall", "AR", "0.50:0.95", "all", 1), ("Average Recall", "AR", "0.50:0.95", "all", 10),
    ("Average Recall", "AR", "0.50:0.95", "all", 100), ("Average Recall", "AR", "0.50:0.95", "small", 100),
    ("Average Recall", "AR", "0.50:0.95", "medium", 100), ("Average Recall", "AR", "0.50:0.95", "large", 100),
]


def format_table(result: dict) -> str:
    """The 12 summary lines of ``summarize()`` (3 decimals)."""
    lines = []
    for (title, short, iou, area, dets), name in zip(_LINES, STAT_NAMES):
        lines.append(f" {title:<18} {'(' + short + ')':<6} @[ IoU={iou:<9} | area={area:>6s} | maxDets={dets:>3d} ]"
                     f" = {result['stats'][name]:0.3f}")
    return "\n".join(lines)
