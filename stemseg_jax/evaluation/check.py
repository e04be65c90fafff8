"""Validation of a results folder / file against ground-truth *metadata* only.

What a user needs before uploading to an evaluation server whose ground truth is private: video ids,
frame names and counts, mask sizes, categories, RLE validity, the formats' own limits. Each checker
returns a list of problems (empty = valid), each naming the file and the frame; malformed results (a
truncated PNG, a non-integer id, an RLE of another mask size) are reported, never a crash or a hang.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from stemseg_jax.evaluation import davis, kitti_mots, ytvis
from stemseg_jax.evaluation.writers import KITTI_CAR, KITTI_PEDESTRIAN, MAX_DAVIS_PROPOSALS
from stemseg_jax.io import image_size, read_json


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
        try:
            h, w = image_size(first)
        except ValueError as err:
            problems.append(f"{first}: cannot read the PNG header (corrupt?) of sequence {seq}: {err}")
            continue
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
            try:
                with Image.open(path) as im:
                    if im.mode not in ("P", "L"):
                        problems.append(f"{path}: PNG mode {im.mode}, expected indexed (P) or L (frame {n})")
                        continue
                    if im.size != (w, h):
                        problems.append(f"{path}: size {im.size[1]}x{im.size[0]}, ground truth {h}x{w} (frame {n})")
                        continue
                    top = int(np.asarray(im).max())
            except (OSError, SyntaxError) as err:  # Pillow's errors on truncated / corrupt files
                problems.append(f"{path}: cannot decode PNG (truncated or corrupt?) (frame {n}): {err}")
                continue
            if top > MAX_DAVIS_PROPOSALS:
                problems.append(f"{path}: proposal id {top} > {MAX_DAVIS_PROPOSALS} (frame {n})")
    return problems


def check_ytvis(gt_json, results_json) -> list[str]:
    """Needs only the GT ``videos`` and ``categories`` (the public val JSON without annotations suffices)."""
    gt_src = gt_json if isinstance(gt_json, str) else "<ground truth>"
    videos, cats = ytvis.gt_metadata(read_json(gt_json, "ground truth") if isinstance(gt_json, str) else gt_json,
                                     gt_src)  # fmt: skip
    name = results_json if isinstance(results_json, str) else "<results>"
    try:
        res = read_json(results_json, "results") if isinstance(results_json, str) else results_json
    except (OSError, ValueError) as err:
        return [f"{name}: cannot read results ({err})"]
    if not isinstance(res, list):
        return [f"{name}: expected a JSON list"]
    if not res:
        return [f"{name}: no results (the official loadRes fails on an empty list)"]
    problems = []
    for i, r in enumerate(res):
        problems += ytvis.result_problems(i, r, videos, cats, name, compressed_only=True)[0]
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
            names = sorted(n for n in os.listdir(img_dir) if n.lower().endswith((".png", ".jpg")))
            if not names:
                problems.append(f"{img_dir}: no frames of sequence {seq}")
                continue
            try:
                size = image_size(os.path.join(img_dir, names[0]))
            except ValueError as err:
                problems.append(str(err))
                continue
            sizes = {f: size for f in range(last + 1)}
        try:
            kitti_mots.load_txt(path, (KITTI_CAR, KITTI_PEDESTRIAN), max_frame=last, size=sizes if sizes else {})
        except (OSError, ValueError) as err:
            problems.append(str(err))
    return problems
