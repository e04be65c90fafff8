"""tools/bench_model.py --against-torch: the same network timed in PyTorch and JAX, checked equal first."""

from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import bench_model  # noqa: E402


def test_against_torch_computes_the_same_numbers_and_prints_the_ratio(capsys):
    pytest.importorskip("torch")
    config = os.path.join(REPO, "configs", "davis.py") + ":tiny"
    rows, checks = bench_model.main(["--config", config, "--frames", "4", "--height", "128", "--width", "160",
                                     "--against-torch", "--repeats", "1"])
    assert [r[0] for r in rows] == ["forward", "train step"]
    assert all(t_torch > 0 and t_jax > 0 for _, t_torch, t_jax, _ in rows)
    # outputs, loss terms and the gradient of every parameter agree (float32 summation order only)
    assert set(checks) >= {"outputs embeddings", "loss", "loss lovasz", "gradients"}
    assert max(checks.values()) < 1e-4, checks
    out = capsys.readouterr().out
    assert "| train step |" in out and "PyTorch / JAX" in out and "same numbers" in out
