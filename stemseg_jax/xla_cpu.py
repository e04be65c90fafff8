"""XLA:CPU settings that decide how fast this project trains on a CPU.

jaxlib 0.10 hands every convolution on the CPU to its YNNPACK library fusion (``ynn_fusion`` in the
compiled HLO). On the development machine (2 cores, AVX-512) that path ran a 3x3, 256 -> 384 channel
convolution on 8 x 64 x 112 maps at 66 GFLOP/s forward + backward, and the kernel gradient alone at
~60; with the fusion off, XLA's Eigen convolutions ran the same at 191 and 287 (docs/BENCHMARKS.md,
"Training against PyTorch"). The fusion is chosen by a process-wide flag that XLA reads once, when the
first CPU client starts, so it can only be set before JAX computes anything: importing ``stemseg_jax``
does that (``prefer_eigen_convolutions``), unless ``XLA_FLAGS`` already names the setting (the user's
choice wins). The flag concerns XLA:CPU only; GPU and TPU programs are unaffected.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
import warnings

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# The oldest jaxlib known to have the flag (XLA aborts the process on a flag it does not know).
_MIN_JAXLIB = (0, 10)


def _flag_value(flags: str) -> str | None:
    """The value of the last ``--xla_cpu_experimental_ynn_fusion_type=...`` in ``flags``, None if absent."""
    value = None
    for token in flags.split():
        if token.startswith(YNN_FUSION_FLAG + "="):
            value = token.split("=", 1)[1]
    return value


@functools.cache  # asked at every traced convolution gradient while the flag is absent
def _jaxlib_version() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0)


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge._backends)
    except (ImportError, AttributeError):  # a JAX without the private registry: assume the worst
        return True


def prefer_eigen_convolutions() -> bool:
    """Turns XLA:CPU's YNNPACK fusions off for this process if that can still take effect.

    Returns True when the setting is (now) in ``XLA_FLAGS``. Leaves ``XLA_FLAGS`` alone when it already
    names the setting, when the installed jaxlib predates the flag, or when a JAX backend has already
    started (then it warns once: convolutions run 2-3x slower on the CPU in that process).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _flag_value(flags) is not None:
        return True
    if _jaxlib_version() < _MIN_JAXLIB:
        return False
    if _backends_started():
        warnings.warn(
            f"stemseg_jax was imported after JAX started, so XLA:CPU keeps its YNNPACK convolutions "
            f"(2-3x slower training on a CPU here); import stemseg_jax first or set "
            f"XLA_FLAGS='{YNN_FUSION_FLAG}='",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FUSION_FLAG}=".strip()
    return True


def eigen_convolutions() -> bool:
    """Whether this process's XLA:CPU runs convolutions itself (True) or through YNNPACK (False).

    Read from ``XLA_FLAGS`` (what the CPU client started with, unless it was changed afterwards)."""
    value = _flag_value(os.environ.get("XLA_FLAGS", ""))
    if value is None:
        return _jaxlib_version() < _MIN_JAXLIB
    return "convolution" not in value.lower()
