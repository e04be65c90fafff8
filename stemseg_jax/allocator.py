"""Runs the command-line entry points under TCMalloc when the machine has it (Linux, CPU training).

XLA:CPU allocates each executable's temporaries afresh on every call. With glibc's malloc, blocks that
large are ``mmap``-ed and unmapped every time, so each train step faults in and zeroes its whole working
set again: ``clear_page_erms`` was 9-13 % of a full DAVIS train step's CPU samples on 2 cores (``perf``,
docs/BENCHMARKS.md). TCMalloc keeps freed pages for reuse; the step ran ~10 % faster with it (PyTorch
gains too, less). glibc's own knobs (``MALLOC_MMAP_MAX_=0``, a large ``MALLOC_TRIM_THRESHOLD_``) did not
help measurably, and jemalloc with its defaults did not either.

The allocator is chosen when a process starts (``LD_PRELOAD``), so ``python -m stemseg_jax.main`` re-runs
itself once, before JAX is imported, with the library preloaded, the same way Intel's PyTorch launcher
does. Only if the library is installed (Debian/Ubuntu: ``apt install libtcmalloc-minimal4``); opt out
with ``STEMSEG_JAX_TCMALLOC=0``; a library named in ``STEMSEG_JAX_TCMALLOC`` is used instead.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

ENV = "STEMSEG_JAX_TCMALLOC"
_SEARCH = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)


def find_tcmalloc(environ=os.environ) -> str | None:
    """Path of the TCMalloc library to preload, or None (opted out, not Linux, or not installed)."""
    choice = environ.get(ENV, "")
    if choice.lower() in ("0", "false", "no", "off"):
        return None
    if choice and choice.lower() not in ("1", "true", "yes", "on"):
        if not os.path.isfile(choice):
            raise FileNotFoundError(f"{ENV}={choice}: no such library file")
        return choice
    if not sys.platform.startswith("linux"):
        return None
    for path in _SEARCH:
        if os.path.isfile(path):
            return path
    # A bare soname is resolved by the dynamic loader's own search path.
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def preload_command(environ=os.environ, argv: list[str] | None = None) -> tuple[list[str], dict] | None:
    """The ``(argv, environment)`` to re-execute this process with TCMalloc preloaded, or None when it
    already is (or none is to be used). ``argv`` defaults to the interpreter's original command line."""
    library = find_tcmalloc(environ)
    preloaded = environ.get("LD_PRELOAD", "")
    if library is None or os.path.basename(library) in preloaded or "tcmalloc" in preloaded:
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = f"{library}:{preloaded}" if preloaded else library
    env[ENV] = library  # the child finds it preloaded and does not re-execute again
    return list(sys.orig_argv if argv is None else argv), env


def reexec_with_tcmalloc() -> None:
    """Replaces this process by the same command with TCMalloc preloaded (see the module docstring);
    returns without doing anything when there is nothing to do."""
    command = preload_command()
    if command is not None:
        argv, env = command
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)
