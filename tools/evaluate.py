"""Evaluates a results folder / file with the benchmark's official metric, or checks it before upload.

  python tools/evaluate.py --benchmark davis --gt DAVIS_ROOT --results RESULTS_DIR [--split val]
  python tools/evaluate.py --benchmark ytvis --gt valid.json --results results.json
  python tools/evaluate.py --benchmark kitti_mots --gt KITTI_MOTS_ROOT --results RESULTS_DIR [--seqmap F]
  ... --check   validates the results against the ground truth's metadata only.
  python tools/evaluate.py --benchmark davis --synthetic 300 [--work DIR]
                generates a synthetic val split of ~300 frames at the benchmark's real frame size
                (stemseg_jax.data.synthetic), writes perturbed ground truth as predictions with our
                writers, evaluates it and prints the time per stage.

Prints the official-style table and the elapsed time, and writes the numbers as JSON next to the results
(``<results dir>/evaluation_<benchmark>.json``, atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from pycocotools import mask as mask_utils

from stemseg_jax.evaluation import check, davis, kitti_mots, writers, ytvis
from stemseg_jax.io import json_finite, write_json

# Frame sizes of the real benchmarks (DAVIS 480p, YouTube-VIS's common 720p halved, KITTI).
REAL_SIZE = {"davis": (480, 854), "ytvis": (360, 640), "kitti_mots": (375, 1242)}


def _perturb(rng, mask: np.ndarray) -> np.ndarray:
    """A plausible prediction of ``mask``: shifted by a few pixels, sometimes eroded away in part."""
    dy, dx = (int(v) for v in rng.integers(-4, 5, size=2))
    out = np.roll(mask, (dy, dx), axis=(0, 1))
    if rng.random() < 0.2:
        out[: out.shape[0] // 2] = False
    return out


def make_synthetic(benchmark: str, work: str, n_frames: int, seed: int = 0) -> tuple[str, str, list]:
    """Synthetic val split + perturbed predictions. Returns ``(gt, results, sequences)``."""
    from stemseg_jax.data import synthetic  # only this benchmarking mode needs the data package

    fmt = "kitti_mots" if benchmark == "kitti_mots" else benchmark
    per_video = 30 if benchmark == "ytvis" else 50
    n_videos = max(1, round(n_frames / per_video))
    h, w = REAL_SIZE[benchmark]
    info = synthetic.generate(fmt, os.path.join(work, "gt"), seed, num_train=0, num_val=n_videos,
                              num_frames=per_video, height=h, width=w, max_objects=5)
    rng = np.random.default_rng(seed)
    res = os.path.join(work, "results")
    seqs = next(iter(info["splits"].values()))
    if benchmark == "davis":
        for seq in seqs:
            names, gt = davis.load_gt_sequence(info["root"], seq)
            n = int(gt[0].max())
            perm = rng.permutation(n) + 1
            pred = np.zeros_like(gt)
            for k in range(1, n + 1):
                for t in range(len(gt)):
                    pred[t][_perturb(rng, gt[t] == k)] = perm[k - 1]
            pred[:, : h // 8, : w // 8] = n + 1  # a spurious proposal
            writers.write_davis_sequence(res, seq, names, pred)
        return info["root"], res, seqs
    if benchmark == "ytvis":
        gt = json.load(open(info["val_gt"]))
        entries = []
        for a in gt["annotations"]:
            masks = np.stack([
                _perturb(rng, mask_utils.decode(mask_utils.frPyObjects(s, h, w)).astype(bool)) if s else
                np.zeros((h, w), bool) for s in a["segmentations"]
            ])
            cat = a["category_id"] if rng.random() < 0.8 else int(rng.choice([c["id"] for c in gt["categories"]]))
            entries.append(writers.ytvis_entry(a["video_id"], cat, float(rng.random()), masks))
        path, _ = writers.write_ytvis_results(res, entries)
        return info["val_gt"], path, seqs
    for seq in seqs:
        frames = kitti_mots.load_txt(os.path.join(info["val_gt"], f"{seq}.txt"), (1, 2, 10))
        dets = []
        for f, objs in frames.items():
            taken = np.zeros((h, w), bool)
            for oid, cls, rle in objs:
                if cls == 10 or rng.random() < 0.1:
                    continue
                m = _perturb(rng, mask_utils.decode(rle).astype(bool)) & ~taken
                taken |= m
                track = oid % 1000 if rng.random() < 0.97 else int(rng.integers(1, 999))
                if m.any() and all(d[1] != track or d[2] != cls for d in dets if d[0] == f):
                    dets.append((f, track, cls, m))
        writers.write_kitti_mots_sequence(res, seq, dets)
    return os.path.dirname(info["val_gt"]), res, seqs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", required=True, choices=["davis", "ytvis", "kitti_mots"])
    ap.add_argument("--gt", help="DAVIS / KITTI-MOTS root, or the YouTube-VIS GT JSON")
    ap.add_argument("--results", help="results folder (DAVIS, KITTI-MOTS) or results.json")
    ap.add_argument("--check", action="store_true", help="validate only (no GT masks needed)")
    ap.add_argument("--split", default="val", help="DAVIS image set")
    ap.add_argument("--sequences", nargs="*", default=None, help="restrict to these sequences")
    ap.add_argument("--seqmap", default=None, help="KITTI-MOTS seqmap file (name empty 000000 last_frame)")
    ap.add_argument("--decay-mode", default="official", choices=["official", "fixed"],
                    help="DAVIS decay bins: the toolkit's uint8 quirk, or fixed for videos > 256 frames")
    ap.add_argument("--synthetic", type=int, default=0, metavar="FRAMES",
                    help="benchmark on a generated synthetic val split of about FRAMES frames")
    ap.add_argument("--work", default=None, help="folder for --synthetic (default: a temp folder)")
    args = ap.parse_args(argv)

    if args.synthetic:
        work = args.work or tempfile.mkdtemp(prefix=f"eval-{args.benchmark}-")
        t0 = time.perf_counter()
        args.gt, args.results, args.sequences = make_synthetic(args.benchmark, work, args.synthetic)
        print(f"synthetic {args.benchmark} split generated in {time.perf_counter() - t0:.1f} s under {work}")
    elif not (args.gt and args.results):
        ap.error("--gt and --results are required (or --synthetic)")

    start = time.perf_counter()
    if args.check:
        if args.benchmark == "davis":
            problems = check.check_davis(args.gt, args.results, args.split, args.sequences)
        elif args.benchmark == "ytvis":
            problems = check.check_ytvis(args.gt, args.results)
        else:
            problems = check.check_kitti_mots(args.gt, args.results, args.sequences, args.seqmap)
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s) found ({time.perf_counter() - start:.2f} s)")
        return 1 if problems else 0

    if args.benchmark == "davis":
        result = davis.evaluate_davis(args.gt, args.results, args.split, args.sequences, decay_mode=args.decay_mode)
        table = davis.format_table(result)
    elif args.benchmark == "ytvis":
        result = ytvis.evaluate_ytvis(args.gt, args.results)
        table = ytvis.format_table(result)
    else:
        result = kitti_mots.evaluate_kitti_mots(args.gt, args.results, args.sequences, args.seqmap)
        table = kitti_mots.format_table(result)
    result["elapsed_seconds"] = time.perf_counter() - start
    folder = args.results if os.path.isdir(args.results) else os.path.dirname(os.path.abspath(args.results))
    out = write_json(os.path.join(folder, f"evaluation_{args.benchmark}.json"), json_finite(result), indent=1)
    print(table)
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result["timings"].items())
    print(f"\nEvaluated {result['num_frames']} frames in {result['elapsed_seconds']:.2f} s ({stages}); written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
