"""Evaluates a results folder / file with the benchmark's official metric, or checks it before upload.

  python tools/evaluate.py --benchmark davis --gt DAVIS_ROOT --results RESULTS_DIR [--split val]
  python tools/evaluate.py --benchmark ytvis --gt valid.json --results results.json
  python tools/evaluate.py --benchmark kitti_mots --gt KITTI_MOTS_ROOT --results RESULTS_DIR [--seqmap F]
  ... --check   validates the results against the ground truth's metadata only.

Prints the official-style table and the elapsed time, and writes the numbers as JSON next to the results
(``<results dir>/evaluation_<benchmark>.json``, atomically).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from stemseg_jax.evaluation import check, davis, kitti_mots, ytvis
from stemseg_jax.evaluation._io import atomic_write_json


def _finite(obj):
    """JSON has no inf / nan: write them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", required=True, choices=["davis", "ytvis", "kitti_mots"])
    ap.add_argument("--gt", required=True, help="DAVIS / KITTI-MOTS root, or the YouTube-VIS GT JSON")
    ap.add_argument("--results", required=True, help="results folder (DAVIS, KITTI-MOTS) or results.json")
    ap.add_argument("--check", action="store_true", help="validate only (no GT masks needed)")
    ap.add_argument("--split", default="val", help="DAVIS image set")
    ap.add_argument("--sequences", nargs="*", default=None, help="restrict to these sequences")
    ap.add_argument("--seqmap", default=None, help="KITTI-MOTS seqmap file (name empty 000000 last_frame)")
    ap.add_argument("--decay-mode", default="official", choices=["official", "fixed"],
                    help="DAVIS decay bins: the toolkit's uint8 quirk, or fixed for videos > 256 frames")
    args = ap.parse_args(argv)

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
    out = atomic_write_json(os.path.join(folder, f"evaluation_{args.benchmark}.json"), _finite(result))
    print(table)
    print(f"\nEvaluated in {result['elapsed_seconds']:.2f} s (metric {result['seconds']:.2f} s); written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
