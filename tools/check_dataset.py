"""Checks every configured dataset before training: lists every problem, exit status 1 when there is one.

  python tools/check_dataset.py --config configs/kitti.py[:variants] [--config.a.b=value ...] [--quick]

Loads every ``config.data.datasets`` entry and ``config.data.val_dataset`` (``--noval``: training data only)
and checks (``stemseg_jax.data.check``):

  metadata (always; ``--mode train`` runs this part up front too): each dataset loads, each training
           category id has a class in the model (``model.num_classes``), each frame file exists;
  pixels   (not with ``--quick``): every mask of every record decoded once and every frame image decoded
           (a truncated JPEG/PNG is reported), their sizes against the annotations'.

Each problem is one line: dataset field, record, frame, what is wrong, the file.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time

import tqdm
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stemseg_jax.data.check import check_metadata, check_record_pixels  # noqa: E402
from stemseg_jax.io import one_line  # noqa: E402

_FLAGS: dict = {}


def define_flags() -> None:
    """The command's flags, defined only when it runs as a program: importing ``run`` (tests, other tools) must
    not claim absl's global ``--config``, which ``stemseg_jax.main`` defines too."""
    _FLAGS["config"] = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/kitti.py:tiny.")
    _FLAGS["quick"] = flags.DEFINE_boolean("quick", False, "Metadata only: no mask or image is decoded.")
    _FLAGS["val"] = flags.DEFINE_boolean("val", True, "Also check data.val_dataset.")
    _FLAGS["threads"] = flags.DEFINE_integer(
        "threads", 4, "Records decoded in parallel (OpenCV and pycocotools release the GIL).")
    _FLAGS["progress"] = flags.DEFINE_boolean("progress", True, "Show a progress bar (on stderr).")

EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def run(config, *, quick: bool = False, val: bool = True, threads: int = 4, progress: bool = True,
        out=sys.stdout) -> int:
    """The check of ``config``'s datasets; prints the problems to ``out``; returns the exit status."""
    t0 = time.perf_counter()
    loaded, problems = check_metadata(config, val=val)
    n_records = sum(len(r) for r in loaded.values())
    print(f"metadata: {len(loaded)} dataset(s), {n_records} record(s), {len(problems)} problem(s) "
          f"({time.perf_counter() - t0:.1f} s)", file=out)
    if not quick:
        t1 = time.perf_counter()
        jobs = [(field, r) for field, records in loaded.items() for r in records]
        total = sum(r.num_frames for _, r in jobs)
        with tqdm.tqdm(total=total, unit="frame", desc="decoding", disable=not progress, dynamic_ncols=True) as bar:
            with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
                # map keeps the records' order, so the listing does not depend on the thread count.
                for found in pool.map(lambda job: check_record_pixels(job[1], job[0], progress=bar.update), jobs):
                    problems += found
        print(f"pixels: {total} frame(s) and their masks decoded ({time.perf_counter() - t1:.1f} s)", file=out)
    for p in problems:
        print(p, file=out)
    print(f"{len(problems)} problem(s) found", file=out)
    return EXIT_PROBLEMS if problems else 0


def main(argv) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments: {argv[1:]}", file=sys.stderr)
        return EXIT_USAGE
    if _FLAGS["config"].value is None:
        print("error: --config is required, e.g. --config configs/kitti.py", file=sys.stderr)
        return EXIT_USAGE
    return run(_FLAGS["config"].value, **{k: _FLAGS[k].value for k in ("quick", "val", "threads", "progress")})


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a bad ``--config`` file or override as one line (exit status 2)."""
    path = next((a.partition("=")[2] for a in argv if a.startswith("--config=")), None)
    if path is None and "--config" in argv[:-1]:
        path = argv[argv.index("--config") + 1]
    if path and not os.path.isfile(path.partition(":")[0]):
        print(f"error: --config {path}: no such config file", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        args = flags.FLAGS(argv)
        if flags.FLAGS["config"].present:
            _ = _FLAGS["config"].value  # ml_collections loads the file (and applies the overrides) on first use
        return args
    except Exception as e:  # noqa: BLE001 (flags.Error, ml_collections' AttributeError, a config's ValueError)
        key = e.args[0] if isinstance(e, AttributeError) and e.args else e
        if isinstance(key, KeyError) and key.args and isinstance(key.args[0], str):
            # ml_collections: an unknown field, as KeyError("'rooot'\nDid you mean "root" instead of "rooot"?")
            field, _, hint = key.args[0].partition("\n")
            message = f"--config override: {field}" + (f" ({hint.strip()})" if hint.strip() else "")
        else:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            # A config file's get_config raised: its own message is the last line, after absl's traceback.
            traced = any(line.startswith("Traceback") for line in lines)
            message = f"{lines[0].rstrip(':')}: {lines[-1]}" if traced else one_line(e)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
