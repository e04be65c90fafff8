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
import os
import sys
import tempfile
import time

from stemseg_jax.benchmarks import BENCHMARKS, ScoreOptions
from stemseg_jax.io import json_finite, write_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
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
    benchmark = BENCHMARKS[args.benchmark]

    if args.synthetic:
        work = args.work or tempfile.mkdtemp(prefix=f"eval-{args.benchmark}-")
        t0 = time.perf_counter()
        args.gt, args.results, args.sequences = benchmark.synthetic_split(work, args.synthetic)
        print(f"synthetic {args.benchmark} split generated in {time.perf_counter() - t0:.1f} s under {work}")
    elif not (args.gt and args.results):
        ap.error("--gt and --results are required (or --synthetic)")
    options = ScoreOptions(sequences=args.sequences, split=args.split, seqmap=args.seqmap, decay_mode=args.decay_mode)

    start = time.perf_counter()
    if args.check:
        problems = benchmark.check(args.gt, args.results, options)
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s) found ({time.perf_counter() - start:.2f} s)")
        return 1 if problems else 0

    result = benchmark.score(args.gt, args.results, options)
    result["elapsed_seconds"] = time.perf_counter() - start
    folder = args.results if os.path.isdir(args.results) else os.path.dirname(os.path.abspath(args.results))
    out = write_json(os.path.join(folder, f"evaluation_{args.benchmark}.json"), json_finite(result), indent=1)
    print(benchmark.format_table(result))
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result["timings"].items())
    print(f"\nEvaluated {result['num_frames']} frames in {result['elapsed_seconds']:.2f} s ({stages}); written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
