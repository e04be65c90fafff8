"""STEm-Seg against the seed's proposal-based baselines (supplementary Sec. III, V) on the same val split.

    python tools/compare_baselines.py --format davis --workdir runs/compare_davis
    python tools/compare_baselines.py --format kitti_mots --workdir runs/compare_kitti --stemseg-steps 600

Generates a synthetic dataset in the benchmark's real format (or uses ``--data DIR``), trains the ``:tiny``
STEm-Seg, the ``:tiny`` Mask R-CNN and the ``:tiny`` re-id network on its train split, runs STEm-Seg,
OF-Tracker, RI-Tracker and UnOVOST on its val split through ``--mode evaluate``'s ``runner.evaluate_split``
(the benchmark's own result files and metric) and prints one table: J&F / J / F (DAVIS) or sMOTSA and HOTA
per class (KITTI-MOTS), and frames per second of the whole inference (proposals, re-id, flow and tracking
included for the baselines). Everything resumes: a finished training is not repeated, and evaluations are
rerun (they are cheap). ``--oracle`` adds each tracker on the val split's ground truth as proposals (a perfect
detector), which separates what the detector loses from what the tracker loses. The table goes to
``WORKDIR/comparison.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The benchmark config of each format, its variant of configs/maskrcnn.py, and the synthetic data's size.
FORMATS = {
    "davis": dict(stemseg="configs/davis.py:tiny,demo", baselines="configs/maskrcnn.py:davis,tiny,demo",
                  data=dict(num_train=24, num_val=6, num_frames=24)),
    "kitti_mots": dict(stemseg="configs/kitti.py:tiny,demo", baselines="configs/maskrcnn.py:kitti,tiny,demo",
                       data=dict(num_train=12, num_val=4, num_frames=40)),
}
METHODS = ("stemseg", "of_tracker", "ri_tracker", "unovost")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", choices=sorted(FORMATS), default="davis")
    p.add_argument("--workdir", required=True)
    p.add_argument("--data", default="", help="an existing dataset of --format (default: generate WORKDIR/data)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    p.add_argument("--stemseg-steps", type=int, default=400)
    p.add_argument("--maskrcnn-steps", type=int, default=400)
    p.add_argument("--reid-steps", type=int, default=200)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--oracle", action="store_true",
                   help="also run each tracker on the val split's ground truth as proposals (a perfect detector)")
    return p.parse_args(argv)


def ensure_data(fmt: str, workdir: str, data: str, seed: int) -> str:
    """The dataset root: ``data``, or a synthetic one generated once into ``workdir/data``."""
    if data:
        return os.path.abspath(data)
    from stemseg_jax.data import synthetic

    root = os.path.join(os.path.abspath(workdir), "data")
    if not os.path.isfile(os.path.join(root, "synthetic_info.json")):
        print(f"== synthetic {fmt} data -> {root}")
        synthetic.generate(fmt, root, seed, **FORMATS[fmt]["data"])
    if fmt == "kitti_mots":
        # The KITTI-MOTS demo config also trains on more 12-sequence sets (tools/demo.sh writes them the same way).
        import runpy

        for extra in runpy.run_path(os.path.join(REPO, "configs", "kitti.py"))["DEMO_MORE_TRAIN_SEEDS"]:
            out = os.path.join(root, "more_train", f"seed_{extra}")
            if not os.path.isfile(os.path.join(out, "synthetic_info.json")):
                synthetic.generate(fmt, out, int(extra), **{**FORMATS[fmt]["data"], "num_val": 0})
    return root


def method_config(fmt: str, method: str, args):
    """The config of one method: STEm-Seg's demo config or configs/maskrcnn.py, shortened to the tool's steps."""
    from stemseg_jax.config import load_config_file

    spec = FORMATS[fmt]["stemseg" if method == "stemseg" else "baselines"]
    config = load_config_file(os.path.join(REPO, spec))
    if method == "stemseg":
        _shorten(config.train, args.stemseg_steps)
    else:
        config.method = method
        _shorten(config.proposals.train, args.maskrcnn_steps)
        _shorten(config.reid, args.reid_steps)
    return config


def _shorten(train, steps: int) -> None:
    """``steps`` steps with the schedule's shape (decay over the last third)."""
    train.num_steps = int(steps)
    train.decay_start = int(steps) * 2 // 3
    train.checkpoint_every = max(1, int(steps) // 2)


def run_method(fmt: str, method: str, args, data_root: str) -> dict:
    """Trains (resuming) and evaluates one method; returns the row of the table."""
    from stemseg_jax.benchmarks import get_benchmark
    from stemseg_jax.methods import train_method
    from stemseg_jax.runner import evaluate_split

    os.environ["STEMSEG_DEMO_DATA"] = data_root
    config = method_config(fmt, method, args)
    # The baselines share one workdir: the Mask R-CNN is trained once for the three trackers.
    workdir = os.path.join(os.path.abspath(args.workdir), "stemseg" if method == "stemseg" else "baselines")
    t0 = time.perf_counter()
    train_method(config, workdir)  # a finished training only restores its last checkpoint
    train_seconds = time.perf_counter() - t0
    summary = evaluate_split(config, workdir)
    return _row(method, fmt, summary, get_benchmark(config.inference.benchmark), train_seconds)


def run_oracle(fmt: str, method: str, args) -> dict:
    """One tracker on ground-truth proposals (score 1), with the networks trained by ``run_method``."""
    from stemseg_jax.benchmarks import get_benchmark
    from stemseg_jax.data import load_dataset
    from stemseg_jax.runner import evaluate_split
    from stemseg_jax.tracking import write_ground_truth_proposals

    config = method_config(fmt, method, args)
    gt_dir = os.path.join(os.path.abspath(args.workdir), "gt_proposals")
    if not os.path.isdir(gt_dir):
        write_ground_truth_proposals(load_dataset(config.data.val_dataset, "data.val_dataset"), gt_dir,
                                     class_agnostic=bool(config.data.class_agnostic))
    config.proposals.dir = gt_dir
    workdir = os.path.join(os.path.abspath(args.workdir), "baselines")
    summary = evaluate_split(config, workdir)
    return _row(f"{method} (GT proposals)", fmt, summary, get_benchmark(config.inference.benchmark), 0.0)


def _row(label: str, fmt: str, summary: dict, benchmark, train_seconds: float) -> dict:
    row = {"method": label, "fps": summary["frames"] / max(summary["inference_seconds"], 1e-9),
           "train_seconds": train_seconds, "metrics": benchmark.headline(summary["metrics"])}
    if fmt == "kitti_mots":
        for name in ("car", "pedestrian"):
            row["metrics"][f"HOTA {name}"] = summary["metrics"]["classes"][name]["trackeval"]["HOTA"]
    return row


def markdown_table(rows: list[dict]) -> str:
    """One row per method: the benchmark's headline metrics (x100), inference frames/s and the training time
    of this run (0 when nothing was trained, e.g. a resumed or oracle row)."""
    keys = list(rows[0]["metrics"]) if rows else []
    lines = ["| method | " + " | ".join(keys) + " | frames/s | train s |", "|---" * (len(keys) + 3) + "|"]
    for r in rows:
        values = " | ".join(f"{100 * r['metrics'][k]:.1f}" for k in keys)
        lines.append(f"| {r['method']} | {values} | {r['fps']:.2f} | {r.get('train_seconds', 0.0):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from stemseg_jax.io import write_json, write_text

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        print(f"error: --methods: unknown {unknown}; expected a subset of {','.join(METHODS)}", file=sys.stderr)
        return 2
    os.makedirs(args.workdir, exist_ok=True)
    data_root = ensure_data(args.format, args.workdir, args.data, args.seed)
    rows = []
    for method in methods:
        print(f"== {method}")
        rows.append(run_method(args.format, method, args, data_root))
    if args.oracle:
        for method in (m for m in methods if m != "stemseg"):
            print(f"== {method} on ground-truth proposals")
            rows.append(run_oracle(args.format, method, args))
    table = markdown_table(rows)
    print(table)
    write_text(os.path.join(args.workdir, "comparison.md"), table + "\n")
    write_json(os.path.join(args.workdir, "comparison.json"), {"format": args.format, "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
