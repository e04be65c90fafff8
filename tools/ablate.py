"""Ablations as one resumable command: the seed's Table I (embedding mixing functions) or any config field.

  # Table I on DAVIS'19 (all six mixing functions, the config's schedule):
  python tools/ablate.py --config configs/davis.py --workdir runs/ablate_davis
  # the small version on the synthetic demo data, 600 steps per run:
  STEMSEG_DEMO_DATA=demo_output/davis/data python tools/ablate.py --config configs/davis.py:tiny,demo \\
      --workdir runs/ablate_davis_demo --steps 600
  # two seeds of one mixing function (the seed-to-seed spread), into the same workdir:
  ... --phi xyff --seeds 42,43
  # any other field, e.g. the main text's ablations:
  ... --phi xyff --override loss.w_smoothness=0,10 --override model.seediness_head=embedding,separate

Every run trains from the same initialisation seed, data order and schedule (only the ablated fields
differ) in its own workdir ``<workdir>/runs/<label>``, then is evaluated on the config's val split with the
benchmark's metric. A rerun skips finished runs (``result.json``) and resumes an interrupted one from its
newest checkpoint; a run that fails is reported as failed in the table and the others go on. Writes
``ablation.md``, ``ablation.json`` and ``ablation.png`` (one bar group per run, one bar per metric) to
``--workdir``, with the seed's Table I figures beside the mixing-function rows.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stemseg_jax.config import EMBEDDING_MODES, embedding_dims, load_config_file  # noqa: E402
from stemseg_jax.io import json_finite, write_bytes, write_json, write_text  # noqa: E402

# The seed's Table I (supplementary Sec. IV), in percent: DAVIS'19 val J&F, YouTube-VIS val AP, KITTI-MOTS
# val sMOTSA per class; the keys are our benchmarks' ``headline`` names.
_TABLE_I_ROWS = {  # phi: (J&F, AP, sMOTSA car, sMOTSA pedestrian)
    "xy": (61.6, 30.5, 64.2, 41.1),
    "xyt": (62.6, 31.8, 72.5, 48.9),
    "xyf": (62.8, 32.6, 71.8, 42.2),
    "xytf": (64.2, 32.4, 71.9, 43.6),
    "xyff": (64.4, 35.0, 73.2, 47.3),
    "xyfff": (62.4, 34.0, 73.4, 41.5),
}
SEED_TABLE_I = {
    phi: {"davis": {"J&F": jf}, "ytvis": {"AP": ap}, "kitti_mots": {"sMOTSA car": car, "sMOTSA pedestrian": ped}}
    for phi, (jf, ap, car, ped) in _TABLE_I_ROWS.items()
}
TABLE_I_PHIS = tuple(SEED_TABLE_I)
FREE_DIM_STD = 0.3  # the official FREE_DIM_STDS value per free dimension


@dataclasses.dataclass
class Run:
    """One point of the ablation: the overrides that define it and where it lives."""

    label: str
    overrides: dict  # dotted config field -> value
    seed: int
    phi: str  # the embedding mixing function it trains with


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string value


def parse_override(spec: str) -> tuple[str, list]:
    """``"model.gn_groups=4,8"`` -> ``("model.gn_groups", [4, 8])``; values are Python literals or bare words."""
    field, sep, values = spec.partition("=")
    if not sep or not field or not values:
        raise ValueError(f"--override {spec!r}: expected FIELD=VALUE[,VALUE...], e.g. model.gn_groups=4,8")
    return field.strip(), [_parse_value(v.strip()) for v in values.split(",")]


def _set_field(config, field: str, value) -> None:
    node = config
    *parents, leaf = field.split(".")
    for name in parents:
        if name not in node:
            raise ValueError(f"--override {field}: the config has no field {name!r}")
        node = node[name]
    if leaf not in node:
        raise ValueError(f"--override {field}: the config has no field {leaf!r}")
    current = node[leaf]
    if isinstance(current, tuple) and not isinstance(value, tuple):
        value = (value,)
    node[leaf] = value


def plan_runs(base_phi: str, phis: list[str] | None, overrides: list[tuple[str, list]], seeds: list[int],
              base_seed: int) -> list[Run]:
    """The runs of an ablation: every mixing function of ``phis`` (the config's own when None) times every
    combination of the override values, times every seed. A label names the seed only when it is not the
    config's, so that adding seeds later reuses the finished run of the config's seed."""
    phis = list(phis) if phis else [base_phi]
    for phi in phis:
        if phi not in EMBEDDING_MODES:
            raise ValueError(f"--phi {phi!r}: unknown mixing function; expected one of {sorted(EMBEDDING_MODES)}")
    runs = []
    value_lists = [[(field, v) for v in values] for field, values in overrides]
    for phi, combo, seed in itertools.product(phis, itertools.product(*value_lists), seeds):
        parts = [phi] + [f"{field}={value}" for field, value in combo]
        label = ",".join(parts + ([f"seed={seed}"] if seed != base_seed else []))
        runs.append(Run(label=label, overrides=dict(combo), seed=seed, phi=phi))
    return runs


def run_config(base, run: Run, steps: int | None):
    """The base config with the run's mixing function (its free dims at the official std), overrides, seed
    and, with ``steps``, a schedule of ``steps`` steps decaying over the last third."""
    config = base.copy_and_resolve_references()
    _, _, n_free = embedding_dims(run.phi)
    config.model.embedding_mode = run.phi
    if len(config.model.free_dim_stds) != n_free:
        config.model.free_dim_stds = (FREE_DIM_STD,) * n_free
    for field, value in run.overrides.items():
        _set_field(config, field, value)
    config.seed = run.seed
    if steps:
        config.train.num_steps = int(steps)
        config.train.decay_start = int(steps) * 2 // 3
        config.train.checkpoint_every = max(1, min(int(config.train.checkpoint_every), int(steps) // 4 or 1))
    return config


def _safe_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=," else "_" for c in label)


def train_and_evaluate(config, workdir: str, progress_desc: str) -> dict:
    """The real run: train (resuming in ``workdir``), then ``--mode evaluate``'s ``evaluate_split``."""
    from stemseg_jax.runner import evaluate_split
    from stemseg_jax.train.trainer import train

    t0 = time.perf_counter()
    train(config, workdir, progress_desc=progress_desc)
    train_seconds = time.perf_counter() - t0
    summary = evaluate_split(config, workdir)
    return {"metrics": summary["metrics"], "train_seconds": train_seconds}


def ablate(base, workdir: str, runs: list[Run], steps: int | None = None,
           run_fn: Callable[[object, str, str], dict] = train_and_evaluate, log=print) -> list[dict]:
    """Runs (or skips, or resumes) every run and returns one row per run:
    ``{label, phi, E, seed, status, metrics, steps, train_seconds, error}``."""
    from stemseg_jax.benchmarks import get_benchmark

    rows, finished_seconds, finished_steps = [], 0.0, 0
    t_start = time.perf_counter()
    for i, run in enumerate(runs, start=1):
        run_dir = os.path.join(workdir, "runs", _safe_label(run.label))
        result_path = os.path.join(run_dir, "result.json")
        config = run_config(base, run, steps)
        benchmark = get_benchmark(config.inference.benchmark)
        row = {"label": run.label, "phi": run.phi, "E": embedding_dims(run.phi)[0], "seed": run.seed,
               "steps": int(config.train.num_steps), "benchmark": benchmark.name}
        if os.path.isfile(result_path):
            with open(result_path) as fh:
                rows.append({**row, **json.load(fh)})
            log(f"[ablation {i}/{len(runs)}] {run.label}: finished earlier, skipped")
            continue
        remaining = sum(int(run_config(base, r, steps).train.num_steps) for r in runs[i - 1:])
        rate = finished_seconds / finished_steps if finished_steps else None
        eta = f"ETA of the ablation {_duration(rate * remaining)}" if rate else "ETA after the first run"
        desc = f"ablation {i}/{len(runs)} {run.label}"
        log(f"[{desc}] {eta} (elapsed {_duration(time.perf_counter() - t_start)})")
        try:
            out = run_fn(config, run_dir, desc)
            metrics = benchmark.headline(out["metrics"]) if out.get("metrics") else {}
            result = {"status": "done", "metrics": metrics, "train_seconds": float(out.get("train_seconds", 0.0))}
            write_json(result_path, json_finite({**row, **result}), indent=1)
            finished_seconds += result["train_seconds"]
            finished_steps += row["steps"]
        except Exception as err:  # one failed run is a row of the table, not the end of the ablation
            result = {"status": "failed", "metrics": {}, "error": f"{type(err).__name__}: {err}"}
            log(f"[{desc}] FAILED: {result['error']}\n{traceback.format_exc(limit=3)}")
        rows.append({**row, **result})
    return rows


def other_finished_runs(workdir: str, rows: list[dict]) -> list[dict]:
    """Finished runs in ``workdir`` that this invocation did not plan (an earlier invocation's, e.g. the
    main Table I before a spread run), so that the written table always covers the whole workdir."""
    known = {r["label"] for r in rows}
    found = []
    runs_dir = os.path.join(workdir, "runs")
    for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
        path = os.path.join(runs_dir, name, "result.json")
        if os.path.isfile(path):
            with open(path) as fh:
                row = json.load(fh)
            if "label" in row and row["label"] not in known:
                found.append(row)
    return found


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _metric_names(rows: list[dict]) -> list[str]:
    names = []
    for row in rows:
        names += [k for k in row.get("metrics", {}) if k not in names]
    return names


def _is_table_i_row(row: dict) -> bool:
    return row["phi"] in SEED_TABLE_I and row["label"].split(",")[0] == row["phi"] and \
        all(not part or part.startswith("seed=") for part in row["label"].split(",")[1:])


def markdown_table(rows: list[dict], command: str) -> str:
    """The table (ours in percent; the seed's Table I beside for the mixing-function rows of its benchmark)."""
    names = _metric_names(rows) or ["metric"]
    benchmark = rows[0]["benchmark"] if rows else ""
    header = ["run", "φ", "E", *[f"{n} (ours)" for n in names], *[f"{n} (seed Table I)" for n in names],
              "steps", "train time", "status"]
    lines = [f"Command: `{command}`", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        ours = [f"{100 * row['metrics'][n]:.1f}" if n in row.get("metrics", {}) else "—" for n in names]
        seed = SEED_TABLE_I.get(row["phi"], {}).get(benchmark, {}) if _is_table_i_row(row) else {}
        ref = [f"{seed[n]:.1f}" if n in seed else "—" for n in names]
        status = row["status"] if row["status"] == "done" else f"failed: {row.get('error', '')[:120]}"
        time_s = _duration(row["train_seconds"]) if row.get("train_seconds") else "—"
        lines.append("| " + " | ".join([row["label"], row["phi"], str(row["E"]), *ours, *ref, str(row["steps"]),
                                         time_s, status]) + " |")
    lines += ["", "Ours: fractions × 100 on the config's val split. Seed Table I: supplementary Sec. IV (DAVIS'19 val "
              "J&F, YouTube-VIS val AP, KITTI-MOTS val sMOTSA), full-size models; a reference, not a target for "
              "small runs."]
    return "\n".join(lines) + "\n"


def bar_chart_png(rows: list[dict], title: str) -> bytes:
    """PNG bytes: one group of bars per run, one bar per metric (percent); failed runs are marked."""
    import io as stdio

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _metric_names(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.0), dpi=120)
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(rows))]
        ys = [100 * r["metrics"].get(name, 0.0) for r in rows]
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    for i, r in enumerate(rows):
        if r["status"] != "done":
            ax.text(i, 1, "failed", ha="center", color="red", rotation=90)
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_title(title)
    if names:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = stdio.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(workdir: str, rows: list[dict], command: str, title: str) -> dict[str, str]:
    paths = {"markdown": os.path.join(workdir, "ablation.md"), "json": os.path.join(workdir, "ablation.json"),
             "png": os.path.join(workdir, "ablation.png")}
    write_text(paths["markdown"], markdown_table(rows, command))
    write_json(paths["json"], json_finite({"command": command, "rows": rows, "seed_table_i": SEED_TABLE_I}),
               indent=1)
    write_bytes(paths["png"], bar_chart_png(rows, title))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a dataset config with variants, e.g. configs/davis.py:tiny,demo")
    ap.add_argument("--workdir", required=True, help="the ablation's folder (one subfolder per run)")
    ap.add_argument("--phi", default=None,
                    help=f"comma-separated mixing functions (default: all of Table I, {','.join(TABLE_I_PHIS)}; "
                         "with --override: the config's own)")
    ap.add_argument("--override", action="append", default=[], metavar="FIELD=V1,V2",
                    help="ablate a config field over these values (repeatable: the runs are the product)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default: the config's schedule)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's seed)")
    args = ap.parse_args(argv)

    base = load_config_file(args.config)
    overrides = [parse_override(o) for o in args.override]
    phis = args.phi.split(",") if args.phi else (None if overrides else list(TABLE_I_PHIS))
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [int(base.seed)]
    runs = plan_runs(base.model.embedding_mode, phis, overrides, seeds, int(base.seed))
    os.makedirs(args.workdir, exist_ok=True)
    rows = ablate(base, args.workdir, runs, args.steps)
    rows += other_finished_runs(args.workdir, rows)
    command = "python tools/ablate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    paths = write_outputs(args.workdir, rows, command, f"{args.config}: {len(rows)} runs")
    print(markdown_table(rows, command))
    print(f"written {paths['markdown']}, {paths['json']}, {paths['png']}")
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
