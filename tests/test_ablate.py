"""tools/ablate.py: planning, resuming, failures, the table with the seed's Table I, and a real two-φ toy."""

import json
import os
import sys

import pytest

from stemseg_jax.data.synthetic import generate
from tests.helpers import REPO, load_config

sys.path.insert(0, os.path.join(REPO, "tools"))
import ablate  # noqa: E402


def _davis_metrics(jf: float) -> dict:
    return {"benchmark": "davis", "global": {"J&F-Mean": jf, "J-Mean": jf - 0.01, "F-Mean": jf + 0.01}}


def test_plan_labels_overrides_and_config():
    runs = ablate.plan_runs("xyff", ["xy", "xyfff"], [ablate.parse_override("loss.w_smoothness=0,10.0")], [42, 43],
                            base_seed=42)
    assert [r.label for r in runs][:4] == ["xy,loss.w_smoothness=0", "xy,loss.w_smoothness=0,seed=43",
                                           "xy,loss.w_smoothness=10.0", "xy,loss.w_smoothness=10.0,seed=43"]
    assert len(runs) == 8
    base = load_config("davis", "tiny")
    config = ablate.run_config(base, runs[-1], steps=30)
    assert config.model.embedding_mode == "xyfff" and config.model.free_dim_stds == (0.3, 0.3, 0.3)
    assert config.loss.w_smoothness == 10.0 and config.seed == 43
    assert (config.train.num_steps, config.train.decay_start) == (30, 20)
    assert ablate.run_config(base, runs[0], steps=None).model.free_dim_stds == ()
    assert base.model.embedding_mode == "xyff"  # the base config is not modified
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        ablate.parse_override("model.gn_groups")
    with pytest.raises(ValueError, match="no field 'gn_group'"):
        ablate.run_config(base, ablate.plan_runs("xy", None, [("model.gn_group", [4])], [42], 42)[0], None)
    with pytest.raises(ValueError, match="unknown mixing function"):
        ablate.plan_runs("xy", ["xyz"], [], [42], 42)


def test_rerun_skips_finished_runs_resumes_the_interrupted_one_and_reports_failures(tmp_path):
    base = load_config("davis", "tiny")
    runs = ablate.plan_runs("xyff", ["xy", "xyt", "xyf"], [], [42], 42)
    calls = []

    def interrupted(config, workdir, desc):
        calls.append(config.model.embedding_mode)
        if config.model.embedding_mode == "xyt":
            raise KeyboardInterrupt  # the user stops the ablation during its second run
        return {"metrics": _davis_metrics(0.5), "train_seconds": 2.0}

    with pytest.raises(KeyboardInterrupt):
        ablate.ablate(base, str(tmp_path), runs, steps=10, run_fn=interrupted, log=lambda *_: None)
    assert calls == ["xy", "xyt"]
    assert os.path.isfile(tmp_path / "runs" / "xy" / "result.json")

    def failing_xyt(config, workdir, desc):
        calls.append(config.model.embedding_mode)
        if config.model.embedding_mode == "xyt":
            raise RuntimeError("out of memory")
        return {"metrics": _davis_metrics(0.7), "train_seconds": 3.0}

    calls.clear()
    rows = ablate.ablate(base, str(tmp_path), runs, steps=10, run_fn=failing_xyt, log=lambda *_: None)
    assert calls == ["xyt", "xyf"]  # the finished run is skipped
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert rows[0]["metrics"]["J&F"] == 0.5 and rows[2]["metrics"]["J&F"] == 0.7  # xy from its earlier result
    assert "out of memory" in rows[1]["error"] and not os.path.exists(tmp_path / "runs" / "xyt" / "result.json")

    # a later invocation with other runs (e.g. a second seed) still tables the finished ones of this one
    later = [dict(rows[2], label="xyf,seed=43", seed=43)]
    assert [r["label"] for r in ablate.other_finished_runs(str(tmp_path), later)] == ["xy", "xyf"]

    paths = ablate.write_outputs(str(tmp_path), rows, "python tools/ablate.py ...", "toy")
    table = open(paths["markdown"]).read()
    lines = [line for line in table.splitlines() if line.startswith("| xy")]
    assert lines[0].startswith("| xy | xy | 2 | 50.0 | 49.0 | 51.0 | 61.6 |")  # ours, then the seed's J&F
    assert "| 62.6 |" in lines[1] and "failed: RuntimeError: out of memory" in lines[1]
    assert "| 62.8 |" in lines[2]
    saved = json.load(open(paths["json"]))
    assert saved["seed_table_i"]["xyff"]["kitti_mots"]["sMOTSA pedestrian"] == 47.3
    assert [r["status"] for r in saved["rows"]] == ["done", "failed", "done"]
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_two_mixing_functions_train_and_evaluate_for_real(tmp_path, monkeypatch):
    root = str(tmp_path / "data")
    generate("davis", root, seed=1, num_train=2, num_val=1, num_frames=8, height=64, width=96)
    monkeypatch.setenv("STEMSEG_DEMO_DATA", root)
    config_file = os.path.join(REPO, "configs", "davis.py") + ":tiny,demo"
    work = str(tmp_path / "ablation")
    real_config = ablate.run_config

    def small(base, run, steps):  # tiny clips so that the two compilations stay short
        c = real_config(base, run, steps)
        c.data.num_frames, c.data.frame_gap, c.inference.frame_overlap = 2, 3, 0
        c.data.min_dim, c.data.max_dim = c.inference.min_dim, c.inference.max_dim = 64, 96
        c.data.num_workers, c.train.image_summary_every = 0, 0
        return c

    monkeypatch.setattr(ablate, "run_config", small)
    assert ablate.main(["--config", config_file, "--workdir", work, "--phi", "xy,xyf", "--steps", "2"]) == 0
    rows = json.load(open(os.path.join(work, "ablation.json")))["rows"]
    assert [(r["phi"], r["E"], r["status"], r["steps"]) for r in rows] == [("xy", 2, "done", 2), ("xyf", 3, "done", 2)]
    assert all(0.0 <= r["metrics"]["J&F"] <= 1.0 for r in rows)
    assert os.path.isdir(os.path.join(work, "runs", "xyf", "checkpoints", "2"))
