"""Benchmark metrics (DAVIS J&F, YouTube-VIS AP, KITTI-MOTS sMOTSA/HOTA) and result writers.

Never imports the model: everything works on files and NumPy arrays.

Entry points: ``evaluate_davis``, ``evaluate_ytvis``, ``evaluate_kitti_mots`` (``davis`` / ``ytvis`` /
``kitti_mots`` modules, each with its ``format_table(result)``), the writers in ``writers`` and the checkers in
``check``. The benchmark rules that use them (``stemseg_jax.benchmarks``) are built on top.
"""

from stemseg_jax.evaluation.davis import evaluate_davis
from stemseg_jax.evaluation.kitti_mots import evaluate_kitti_mots
from stemseg_jax.evaluation.writers import (
    kitti_mots_postprocess,
    postprocess_kitti_mots_dir,
    write_davis_sequence,
    write_kitti_mots_sequence,
    write_ytvis_results,
    ytvis_entry,
)
from stemseg_jax.evaluation.ytvis import evaluate_ytvis

__all__ = [
    "evaluate_davis", "evaluate_kitti_mots", "evaluate_ytvis", "kitti_mots_postprocess",
    "postprocess_kitti_mots_dir", "write_davis_sequence", "write_kitti_mots_sequence", "write_ytvis_results",
    "ytvis_entry",
]
