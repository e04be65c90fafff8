"""Splits a YouTube-VIS train JSON by video into a train part and an annotated held-out part.

    python tools/split_ytvis.py --json $YOUTUBE_VIS_DIR/train.json --out-dir $YOUTUBE_VIS_LOCAL \\
        --held-out-fraction 0.1 --seed 0

The official valid ground truth is private; the held-out part keeps its annotations, so
``--config configs/youtube_vis.py:local`` trains on ``train.json`` and ``--mode evaluate`` scores AP on
``held_out.json`` locally. Both parts keep every other top-level key (``info``, ``categories``, ...).
The split depends only on the video ids and the seed; the counts of both parts are printed.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import sys

import numpy as np

from stemseg_jax import io
from stemseg_jax.data.readers import common

TRAIN_NAME, HELD_OUT_NAME = "train.json", "held_out.json"


def _checked(data, path: str) -> tuple[list[int], list[int]]:
    """The video ids and each annotation's video id, with a clear error on a file this tool cannot split."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in ("videos", "annotations"):
        if not isinstance(data.get(key), list):
            what = "missing" if key not in data else f"a {type(data[key]).__name__}, not a list"
            raise ValueError(f"{path}: {key!r} is {what} (the held-out part needs the train split's annotations)")
    vids: list[int] = []
    known: set[int] = set()
    for k, v in enumerate(data["videos"]):
        vid = common.json_record(v, k, "videos", ("id",), known, path)[0]
        vids.append(vid)
        known.add(vid)
    ann_vids = []
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or "video_id" not in a:
            raise ValueError(f"{path}: annotations[{k}] must be an object with a 'video_id'")
        vid = common.require_int(a["video_id"], f"{path}: annotations[{k}]", "video_id")
        if vid not in known:
            raise ValueError(f"{path}: annotations[{k}] refers to unknown video_id {vid}")
        ann_vids.append(vid)
    return vids, ann_vids


def split_ytvis(data: dict, held_out_fraction: float, seed: int, path: str = "<json>") -> tuple[dict, dict]:
    """``(train, held_out)`` dicts: videos drawn by a seeded permutation of the sorted video ids,
    ``round(fraction * videos)`` (at least one, at most all but one) held out; videos and annotations
    keep their order in the file."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"--held-out-fraction must be in (0, 1), got {held_out_fraction}")
    vids, ann_vids = _checked(data, path)
    if len(vids) < 2:
        raise ValueError(f"{path}: {len(vids)} video(s); a split needs at least 2")
    count = min(max(1, math.floor(held_out_fraction * len(vids) + 0.5)), len(vids) - 1)
    order = np.random.default_rng(seed).permutation(len(vids))
    held = {sorted(vids)[i] for i in order[:count]}
    parts = []
    for keep in (lambda v: v not in held, lambda v: v in held):
        part = {k: v for k, v in data.items() if k not in ("videos", "annotations")}
        part["videos"] = [v for v, vid in zip(data["videos"], vids) if keep(vid)]
        part["annotations"] = [a for a, vid in zip(data["annotations"], ann_vids) if keep(vid)]
        parts.append(part)
    return parts[0], parts[1]


def _category_order(cat) -> tuple:
    return (0, cat, "") if isinstance(cat, int) else (1, 0, str(cat))


def counts(part: dict) -> dict:
    """``videos``, ``instances`` (annotations, crowd ones included) and ``per_category`` {category id: instances}."""
    per_category = collections.Counter(a.get("category_id") for a in part["annotations"])
    return dict(videos=len(part["videos"]), instances=len(part["annotations"]),
                per_category=dict(sorted(per_category.items(), key=lambda kv: _category_order(kv[0]))))  # fmt: skip


def format_counts(data: dict, train: dict, held_out: dict) -> str:
    """The table the tool prints: totals, then one row per category (its name where the file has one)."""
    names = {c.get("id"): c.get("name", "") for c in data.get("categories", []) if isinstance(c, dict)}
    a, b = counts(train), counts(held_out)
    lines = [f"{'':<24}{'train':>10}{'held-out':>10}", f"{'videos':<24}{a['videos']:>10}{b['videos']:>10}",
             f"{'instances':<24}{a['instances']:>10}{b['instances']:>10}"]  # fmt: skip
    for cat in sorted(set(a["per_category"]) | set(b["per_category"]), key=_category_order):
        label = f"  {cat} {names.get(cat, '')}".rstrip()[:24]
        lines.append(f"{label:<24}{a['per_category'].get(cat, 0):>10}{b['per_category'].get(cat, 0):>10}")
    missing = [c for c in a["per_category"] if c not in b["per_category"]]
    if missing:
        lines.append(f"categories without a held-out instance: {missing}")
    return "\n".join(lines)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="the YouTube-VIS train JSON (with annotations)")
    p.add_argument("--out-dir", required=True, help=f"where {TRAIN_NAME} and {HELD_OUT_NAME} are written")
    p.add_argument("--held-out-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    try:
        data = common.load_json(args.json, "YouTube-VIS JSON")
        train, held_out = split_ytvis(data, args.held_out_fraction, args.seed, args.json)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Both files are written atomically: a reader never sees half of one.
    io.write_json(os.path.join(args.out_dir, TRAIN_NAME), train)
    io.write_json(os.path.join(args.out_dir, HELD_OUT_NAME), held_out)
    print(format_counts(data, train, held_out))
    print(f"wrote {os.path.join(args.out_dir, TRAIN_NAME)} and {os.path.join(args.out_dir, HELD_OUT_NAME)} "
          f"(seed {args.seed})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
