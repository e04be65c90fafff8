"""Benchmarks as pluggable pieces: one module per benchmark behind ``base.Benchmark``, looked up here.

``evaluate_split`` (``--mode evaluate``), ``--mode infer`` and ``tools/evaluate.py`` take a benchmark from
``BENCHMARKS`` by name; adding one means adding a module and a line to this dict. Never imports the model:
benchmarks consume ``results.VideoResult`` from any method.
"""

from stemseg_jax.benchmarks.base import Benchmark, ScoreOptions, SplitWriter
from stemseg_jax.benchmarks.davis import Davis
from stemseg_jax.benchmarks.kitti_mots import KittiMots
from stemseg_jax.benchmarks.ytvis import YouTubeVIS

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (Davis(), YouTubeVIS(), KittiMots())}


def get_benchmark(name: str, field: str = "config.inference.benchmark") -> Benchmark:
    """The benchmark called ``name``; an unknown name is an error naming ``field`` and the choices."""
    if name not in BENCHMARKS:
        raise ValueError(f"{field}={name!r}: unknown benchmark; expected one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


__all__ = ["BENCHMARKS", "Benchmark", "ScoreOptions", "SplitWriter", "get_benchmark"]
