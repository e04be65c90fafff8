"""Validation of a results folder / file against ground-truth *metadata* only.

What a user needs before uploading to an evaluation server whose ground truth is private: video ids,
frame names and counts, mask sizes, categories, RLE validity, the formats' own limits. Each checker
returns a list of problems (empty = valid), each naming the file and the frame.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from stemseg_jax.evaluation import davis, kitti_mots
from stemseg_jax.evaluation.writers import KITTI_CAR, KITTI_PEDESTRIAN, MAX_DAVIS_PROPOSALS


def check_davis(gt_root: str, results_dir: str, split: str = "val", sequences=None) -> list[str]:
    """Needs only the frame names and size (``Annotations_unsupervised``, else ``JPEGImages``, 480p)."""
    problems = []
    seqs = list(sequences) if sequences is not None else davis.list_sequences(gt_root, split)
    for seq in seqs:
        # Test-dev / challenge splits publish frames but no annotations: fall back to JPEGImages.
        names, first = None, None
        for sub, ext in (("Annotations_unsupervised", ".png"), ("JPEGImages", ".jpg")):
            folder = os.path.join(gt_root, sub, "480p", seq)
            if os.path.isdir(folder):
                names = sorted(os.path.splitext(n)[0] for n in os.listdir(folder) if n.endswith(ext))
                first = os.path.join(folder, names[0] + ext) if names else None
                break
        if not first:
            problems.append(f"{gt_root}: no annotations or frames for sequence {seq}")
            continue
        with Image.open(first) as im:
            w, h = im.size
        folder = os.path.join(results_dir, seq)
        if not os.path.isdir(folder):
            problems.append(f"{folder}: missing result folder for sequence {seq}")
            continue
        extra = sorted(set(os.path.splitext(n)[0] for n in os.listdir(folder) if n.endswith(".png")) - set(names))
        if extra:
            problems.append(f"{folder}: frames not in the ground truth: {extra[:5]}")
        for n in names:
            path = os.path.join(folder, n + ".png")
            if not os.path.isfile(path):
                problems.append(f"{path}: missing result frame {n}")
                continue
            with Image.open(path) as im:
                if im.mode not in ("P", "L"):
                    problems.append(f"{path}: PNG mode {im.mode}, expected indexed (P) or L (frame {n})")
                    continue
                if im.size != (w, h):
                    problems.append(f"{path}: size {im.size[1]}x{im.size[0]}, ground truth {h}x{w} (frame {n})")
                    continue
                top = int(np.asarray(im).max())
            if top > MAX_DAVIS_PROPOSALS:
                problems.append(f"{path}: proposal id {top} > {MAX_DAVIS_PROPOSALS} (frame {n})")
    return problems


def _rle_problem(seg, h: int, w: int) -> str | None:
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        return "not an RLE dict {size, counts}"
    if [int(s) for s in seg["size"]] != [h, w]:
        return f"mask size {list(seg['size'])}, video is {[h, w]}"
    if not isinstance(seg["counts"], str):
        return "counts must be a compressed RLE string"
    try:
        m = mask_utils.decode({"size": [h, w], "counts": seg["counts"].encode("ascii")})
    except Exception as err:  # pycocotools raises assorted errors on corrupt strings
        return f"RLE does not decode ({err})"
    if m.shape != (h, w):
        return "RLE decodes to the wrong size"
    return None


def check_ytvis(gt_json, results_json) -> list[str]:
    """Needs only the GT ``videos`` and ``categories`` (the public val JSON without annotations suffices)."""
    gt = json.load(open(gt_json)) if isinstance(gt_json, str) else gt_json
    name = results_json if isinstance(results_json, str) else "<results>"
    try:
        res = json.load(open(results_json)) if isinstance(results_json, str) else results_json
    except (OSError, json.JSONDecodeError) as err:
        return [f"{name}: cannot read results ({err})"]
    if not isinstance(res, list):
        return [f"{name}: expected a JSON list"]
    if not res:
        return [f"{name}: no results (the official loadRes fails on an empty list)"]
    videos = {int(v["id"]): v for v in gt["videos"]}
    cats = {int(c["id"]) for c in gt["categories"]}
    problems = []
    for i, r in enumerate(res):
        missing = {"video_id", "category_id", "score", "segmentations"} - set(r)
        if missing:
            problems.append(f"{name}: result {i} lacks {sorted(missing)}")
            continue
        vid = int(r["video_id"])
        if vid not in videos:
            problems.append(f"{name}: result {i} is for unknown video {vid}")
            continue
        if int(r["category_id"]) not in cats:
            problems.append(f"{name}: result {i} (video {vid}) has unknown category {r['category_id']}")
        if not isinstance(r["score"], (int, float)) or not np.isfinite(r["score"]):
            problems.append(f"{name}: result {i} (video {vid}) has a non-numeric score")
        v = videos[vid]
        length = v.get("length", len(v.get("file_names", [])))
        if len(r["segmentations"]) != length:
            problems.append(f"{name}: result {i} (video {vid}) has {len(r['segmentations'])} frames, "
                            f"the video has {length}")
        for t, seg in enumerate(r["segmentations"]):
            if seg is None:
                continue
            why = _rle_problem(seg, int(v["height"]), int(v["width"]))
            if why:
                problems.append(f"{name}: result {i} (video {vid}), frame {t}: {why}")
    return problems


def check_kitti_mots(gt_root: str, results_dir: str, sequences=None, seqmap: str | None = None) -> list[str]:
    """Needs sequence lengths (seqmap or ``image_02``) and, where present, frame sizes from ``image_02``."""
    problems = []
    lengths = kitti_mots.sequence_lengths(gt_root, sequences, seqmap)
    for seq, last in lengths.items():
        path = os.path.join(results_dir, f"{seq}.txt")
        img_dir = kitti_mots.image_dir(gt_root, seq)
        sizes = None
        if img_dir is not None:
            first = sorted(os.listdir(img_dir))[0]
            with Image.open(os.path.join(img_dir, first)) as im:
                size = (im.size[1], im.size[0])
            sizes = {f: size for f in range(last + 1)}
        try:
            kitti_mots.load_txt(path, (KITTI_CAR, KITTI_PEDESTRIAN), max_frame=last, size=sizes if sizes else {})
        except (OSError, ValueError) as err:
            problems.append(str(err))
    return problems
