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
import json
import os
import time

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from stemseg_jax.io import rle_areas, to_coco_rle

# ytvoseval's area ranges (on the mean per-frame area), not COCO's 32^2 / 96^2.
AREA_RANGES = [[0**2, 1e5**2], [0**2, 128**2], [128**2, 256**2], [256**2, 1e5**2]]
STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def _load_json(obj, what: str):
    if isinstance(obj, (str, os.PathLike)):
        if not os.path.isfile(obj):
            raise FileNotFoundError(f"YouTube-VIS {what} file not found: {obj}")
        with open(obj) as fh:
            try:
                return json.load(fh)
            except json.JSONDecodeError as err:
                raise ValueError(f"{obj}: not valid JSON ({err})") from err
    return obj


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
    for key in ("videos", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{src}: missing field {key!r}")
    videos = {}
    for v in data["videos"]:
        length = v.get("length", len(v.get("file_names", [])))
        videos[int(v["id"])] = {"height": int(v["height"]), "width": int(v["width"]), "length": int(length),
                                "name": os.path.dirname(v["file_names"][0]) if v.get("file_names") else str(v["id"])}
    tracks = []
    for a in data["annotations"]:
        vid = int(a["video_id"])
        if vid not in videos:
            raise ValueError(f"{src}: annotation {a.get('id')} refers to unknown video {vid}")
        h, w = videos[vid]["height"], videos[vid]["width"]
        rles = []
        for seg in a["segmentations"]:
            if not seg:
                rles.append(None)
            elif isinstance(seg, list):  # polygons
                rles.append(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
            else:
                rles.append(to_coco_rle(seg))
        areas = a.get("areas")
        if areas is None:
            areas = [int(mask_utils.area(r)) if r is not None else None for r in rles]
        tracks.append({
            "id": int(a["id"]), "image_id": vid, "category_id": int(a["category_id"]),
            "iscrowd": int(a.get("iscrowd", 0)), "area": _avg_area(areas), "rles": rles,
        })
    return {"videos": videos, "categories": {int(c["id"]): c.get("name", str(c["id"])) for c in data["categories"]},
            "tracks": tracks, "source": src}


def load_results(results_json, gt: dict) -> list[dict]:
    """Parses and validates predictions against the GT metadata; ids 1..N in file order (as ``loadRes``)."""
    src = results_json if isinstance(results_json, str) else "<results>"
    data = _load_json(results_json, "results")
    if not isinstance(data, list):
        raise ValueError(f"{src}: expected a JSON list of results")
    out = []
    for i, r in enumerate(data):
        for key in ("video_id", "category_id", "score", "segmentations"):
            if key not in r:
                raise ValueError(f"{src}: result {i} lacks {key!r}")
        vid = int(r["video_id"])
        if vid not in gt["videos"]:
            raise ValueError(f"{src}: result {i} is for unknown video {vid}")
        if int(r["category_id"]) not in gt["categories"]:
            raise ValueError(f"{src}: result {i} (video {vid}) has unknown category {r['category_id']}")
        v = gt["videos"][vid]
        segs = r["segmentations"]
        if len(segs) != v["length"]:
            raise ValueError(f"{src}: result {i} (video {vid}) has {len(segs)} frames, the video has {v['length']}")
        rles = []
        for t, seg in enumerate(segs):
            if seg is None:
                rles.append(None)
                continue
            if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
                raise ValueError(f"{src}: result {i} (video {vid}), frame {t}: not an RLE dict")
            if [int(s) for s in seg["size"]] != [v["height"], v["width"]]:
                raise ValueError(f"{src}: result {i} (video {vid}), frame {t}: mask size {seg['size']} "
                                 f"differs from the video's {[v['height'], v['width']]}")
            rles.append(to_coco_rle(seg))
        areas = _rle_areas(rles)
        out.append({"id": i + 1, "image_id": vid, "category_id": int(r["category_id"]), "score": float(r["score"]),
                    "iscrowd": 0, "area": _avg_area(areas), "rles": rles})
    return out


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
