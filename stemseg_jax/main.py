"""Entry point: ``python -m stemseg_jax.main --config configs/kitti.py --workdir runs/kitti [--mode train]``.

Modes:
  train     train (resuming from the newest checkpoint in --workdir)
  evaluate  run inference on the config's validation split and compute the benchmark's metrics
  infer     segment any video file or frame folder (``--config.inference.input=PATH``); writes masks,
            an overlay MP4 and a GIF to ``--workdir/infer/<name>``
  smoke     one forward + loss + backward pass of the model on a generated clip (shapes, loss terms, timings)

Config fields are overridden with ``--config.a.b=value`` (ml_collections config_flags). Every field, its
default and what it means: ``stemseg_jax/config.py`` (``base_config``); the config files and their
``:variants``: README.md, "Configs".

Errors a user can fix (a missing path, a bad setting, an incompatible checkpoint, a full disk) are printed as
one line ``error: ...`` and exit with status 2; ``--verbose`` or ``STEMSEG_VERBOSE=1`` shows the traceback.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

MODES = ("train", "evaluate", "infer", "smoke")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/ (with :variants).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_string("mode", "train", f"One of {', '.join(MODES)} (see above).")
_VERBOSE = flags.DEFINE_boolean("verbose", False, "On an error, show its traceback (also STEMSEG_VERBOSE=1).")

# What a user causes and can fix from the message alone (OSError covers FileNotFoundError, PermissionError,
# NotADirectoryError and a failed checkpoint save); anything else is a bug and keeps its traceback.
USER_ERRORS = (OSError, ValueError, FloatingPointError, app.UsageError)
EXIT_USER_ERROR = 2
VERBOSE_HINT = "(--verbose or STEMSEG_VERBOSE=1 shows the traceback)"
USAGE_HINT = "(--help lists the modes and flags)"


def verbose_requested(argv=()) -> bool:
    """``STEMSEG_VERBOSE`` set (and not 0/false/no), or ``--verbose`` in ``argv`` (also before flag parsing)."""
    if os.environ.get("STEMSEG_VERBOSE", "").strip().lower() not in ("", "0", "false", "no"):
        return True
    return any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in argv)


def one_line(error: BaseException) -> str:
    """The error's message on one line (messages from other libraries may span several)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def report(message: str, hint: str = VERBOSE_HINT) -> int:
    """Prints ``error: message`` and one hint line to stderr; returns the exit status of a user's error."""
    print(f"error: {message}", file=sys.stderr)
    print(hint, file=sys.stderr)
    return EXIT_USER_ERROR


class _DropOrbaxTracebacks(logging.Filter):
    """Orbax logs a failed background save with its traceback, then raises it again at the next wait, where
    the trainer reports it in one line: without --verbose the logged copy only buries that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and "orbax" in (record.pathname or ""))


@contextlib.contextmanager
def quiet_orbax_tracebacks(enabled: bool = True):
    absl_logger = logging.getLogger("absl")
    drop = _DropOrbaxTracebacks()
    if enabled:
        absl_logger.addFilter(drop)
    try:
        yield
    finally:
        absl_logger.removeFilter(drop)


def check_dataset_paths(config) -> None:
    """Fails with one message naming every configured dataset root that does not exist."""
    missing = []
    for name, ds in sorted(config.data.datasets.items()):
        root = os.path.expandvars(str(ds.root))
        if "$" in root or not os.path.exists(root):
            missing.append(f"config.data.datasets.{name}.root = {ds.root!r} -> {root!r}")
    if missing:
        raise FileNotFoundError(
            f"training data not found: {'; '.join(missing)} "
            "(set the environment variables or --config.data.datasets.<name>.root=DIR)"
        )


def validate(config, mode: str) -> None:
    """The checks that need no data, model or workdir, so that a bad setting stops a run before it creates
    anything: the benchmark and method names, and for training the config's values, the schedule and the
    optimizer's settings and the dataset roots."""
    from stemseg_jax.benchmarks import get_benchmark
    from stemseg_jax.methods import get_method

    get_benchmark(config.inference.benchmark)
    get_method(config)
    if mode == "train":
        from stemseg_jax.config import check_values
        from stemseg_jax.train.optim import check_settings

        check_values(config)
        check_settings(config.train)
        check_dataset_paths(config)


def run(config, workdir: str | None, mode: str) -> int:
    if mode not in MODES:
        raise app.UsageError(f"unknown --mode {mode!r}; expected one of: {', '.join(MODES)}")
    if mode == "smoke":
        from stemseg_jax.smoke import run_smoke

        run_smoke(config)
        return 0
    if not workdir:
        raise app.UsageError(f"--workdir is required for --mode {mode}")
    if mode == "train" and config.train.get("distributed", False):
        # Before validate(): its optimizer check starts JAX, after which jax.distributed cannot join the cluster.
        from stemseg_jax.train.trainer import initialize_distributed

        initialize_distributed()
    validate(config, mode)
    if mode == "train":
        from stemseg_jax.methods import train_method

        train_method(config, workdir)  # checks that --workdir is writable before it creates anything there
        return 0
    from stemseg_jax.checkpoints import check_writable_dir
    from stemseg_jax.runner import evaluate_split, infer_input

    # Outputs go to --workdir only after the inference: a read-only or full disk is found now instead.
    check_writable_dir(workdir, "--workdir", create=False)
    if mode == "evaluate":
        evaluate_split(config, workdir)
    else:
        infer_input(config, workdir)
    return 0


def run_reporting_errors(config, workdir: str | None, mode: str, verbose: bool = False) -> int:
    """``run``, with a user's error reported as one line and exit status 2 (re-raised when ``verbose``)."""
    try:
        with quiet_orbax_tracebacks(not verbose):
            return run(config, workdir, mode)
    except USER_ERRORS as e:
        if verbose:
            raise
        return report(one_line(e), USAGE_HINT if isinstance(e, app.UsageError) else VERBOSE_HINT)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad ``--config`` file or override reported in one line (exit status 2):
    ml_collections raises a 50-line traceback for an unknown field and defers a missing config file to
    the first use of the config."""
    path = _config_file_arg(argv)
    if path and not os.path.isfile(path.partition(":")[0]) and not verbose_requested(argv):
        sys.exit(report(f"--config {path}: no such config file", USAGE_HINT))
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 (flags.Error, ml_collections' AttributeError, a config's ValueError)
        if verbose_requested(argv):
            raise
        sys.exit(report(_flag_error_message(e, argv), USAGE_HINT))


def _config_file_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a[len("--config="):]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _flag_error_message(error: Exception, argv: list[str]) -> str:
    text = str(error)
    if isinstance(error, (AttributeError, KeyError)):
        # ml_collections: the repr of a KeyError, e.g. "'num_step'\nDid you mean "num_steps" instead of ...".
        with contextlib.suppress(ValueError, SyntaxError):
            text = ast.literal_eval(text) if text[:1] in "'\"" else text
        field, _, hint = str(text).partition("\n")
        field = field.strip("'\"")
        arg = next((a for a in argv if a.startswith("--config.") and field in a.partition("=")[0].split(".")),
                   "a --config override")
        return f"{arg}: no config field {field!r}" + (f" ({hint.strip()})" if hint.strip() else "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        # A config file's get_config raised: its own message is the last line, after absl's prefix.
        return f"{lines[0].rstrip(':')}: {lines[-1]}"
    return one_line(error)


def main(argv):
    if len(argv) > 1:
        return report(f"unexpected arguments: {argv[1:]}", USAGE_HINT)
    if _CONFIG.value is None:
        return report("--config is required, e.g. --config configs/kitti.py", USAGE_HINT)
    # Orbax and grain log every checkpoint step at INFO through absl; keep the console to our progress.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("stemseg_jax").setLevel(logging.INFO)
    return run_reporting_errors(_CONFIG.value, _WORKDIR.value, _MODE.value,
                                verbose=_VERBOSE.value or verbose_requested())


if __name__ == "__main__":
    from stemseg_jax.allocator import reexec_with_tcmalloc

    reexec_with_tcmalloc()  # before JAX starts: see stemseg_jax/allocator.py
    app.run(main, flags_parser=parse_flags)
