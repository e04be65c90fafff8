"""``tools/split_ytvis.py``: a seeded by-video split of a YouTube-VIS train JSON, scored locally (``:local``)."""

import json
import os
import sys

import pytest

from configs import youtube_vis
from stemseg_jax.benchmarks import BENCHMARKS
from stemseg_jax.data import synthetic
from stemseg_jax.data.readers import load_dataset
from stemseg_jax.evaluation import writers
from stemseg_jax.evaluation.ytvis import evaluate_ytvis
from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
import split_ytvis  # noqa: E402

sys.path.pop(0)


@pytest.fixture(scope="module")
def ytvis(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ytvis_split"))
    synthetic.generate("ytvis", root, seed=7, num_train=12, num_val=0, num_frames=3, height=32, width=48)
    with open(os.path.join(root, "train.json")) as f:
        return root, json.load(f)


def _ids(part):
    return [v["id"] for v in part["videos"]]


def test_counts_add_up_and_parts_are_disjoint(ytvis):
    _, data = ytvis
    train, held = split_ytvis.split_ytvis(data, 0.25, seed=0)
    assert len(held["videos"]) == 3 and len(train["videos"]) == 9
    assert not set(_ids(train)) & set(_ids(held))
    assert sorted(_ids(train) + _ids(held)) == sorted(_ids(data))
    for part in (train, held):
        assert {a["video_id"] for a in part["annotations"]} <= set(_ids(part))
        assert part["categories"] == data["categories"] and part["info"] == data["info"]
    a, b, total = split_ytvis.counts(train), split_ytvis.counts(held), split_ytvis.counts(data)
    assert a["instances"] + b["instances"] == total["instances"] == len(data["annotations"])
    for cat, n in total["per_category"].items():
        assert a["per_category"].get(cat, 0) + b["per_category"].get(cat, 0) == n
    # Order within a part is the file's order.
    assert _ids(train) == [v for v in _ids(data) if v in set(_ids(train))]


def test_deterministic_by_seed(ytvis):
    _, data = ytvis
    first = _ids(split_ytvis.split_ytvis(data, 0.25, seed=0)[1])
    assert first == _ids(split_ytvis.split_ytvis(data, 0.25, seed=0)[1])
    others = {tuple(_ids(split_ytvis.split_ytvis(data, 0.25, seed=s)[1])) for s in range(1, 6)}
    assert others - {tuple(first)}  # another seed draws other videos
    shuffled = dict(data, videos=data["videos"][::-1])  # the split does not depend on the file's order
    assert sorted(_ids(split_ytvis.split_ytvis(shuffled, 0.25, seed=0)[1])) == sorted(first)


def test_tool_writes_both_parts_and_prints_counts(ytvis, tmp_path, capsys):
    root, data = ytvis
    out = str(tmp_path / "local")
    assert split_ytvis.main(["--json", os.path.join(root, "train.json"), "--out-dir", out,
                             "--held-out-fraction", "0.25", "--seed", "3"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    train, held = (json.load(open(os.path.join(out, n))) for n in ("train.json", "held_out.json"))
    assert (train, held) == split_ytvis.split_ytvis(data, 0.25, seed=3)
    assert f"{'videos':<24}{9:>10}{3:>10}" in printed
    assert "instances" in printed and data["categories"][0]["name"] in printed
    assert oct(os.stat(os.path.join(out, "held_out.json")).st_mode & 0o777) != oct(0o600)


def test_local_variant_scores_a_perfect_result_ap_1(ytvis, tmp_path, monkeypatch):
    root, _ = ytvis
    local = str(tmp_path / "local")
    assert split_ytvis.main(["--json", os.path.join(root, "train.json"), "--out-dir", local, "--seed", "1",
                             "--held-out-fraction", "0.3"]) == 0  # fmt: skip
    monkeypatch.setenv("YOUTUBE_VIS_DIR", root)
    monkeypatch.setenv("YOUTUBE_VIS_LOCAL", local)
    config = youtube_vis.get_config("local,tiny")
    held = json.load(open(os.path.join(local, "held_out.json")))
    train_records = load_dataset(config.data.datasets.youtube_vis)
    val_records = load_dataset(config.data.val_dataset)
    assert sorted(int(r.name) for r in val_records) == sorted(_ids(held))
    assert not {r.name for r in train_records} & {r.name for r in val_records}
    assert all(r.instance_ids for r in val_records)  # the held-out part is annotated
    benchmark = BENCHMARKS[config.inference.benchmark]
    gt = benchmark.ground_truth(config.data.val_dataset)
    assert gt == os.path.join(local, "held_out.json")
    # A perfect result: every held-out instance with its own masks, decoded through the reader.
    entries = []
    for r in val_records:
        masks, _ = r.masks.load(list(range(r.num_frames)), list(r.instance_ids))
        entries += [writers.ytvis_entry(int(r.name), r.categories[i], 1.0, masks[k])
                    for k, i in enumerate(r.instance_ids)]  # fmt: skip
    results, _ = writers.write_ytvis_results(str(tmp_path / "results"), entries)
    assert evaluate_ytvis(gt, results)["stats"]["AP"] == pytest.approx(1.0)
    # ... and the check can fail: a wrong category for one instance lowers AP.
    other = next(c["id"] for c in held["categories"] if c["id"] != entries[0]["category_id"])
    entries[0] = dict(entries[0], category_id=other)
    worse, _ = writers.write_ytvis_results(str(tmp_path / "worse"), entries)
    assert evaluate_ytvis(gt, worse)["stats"]["AP"] < 1.0


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"videos": [{"id": 1}, {"id": 2}]}))
    assert split_ytvis.main(["--json", str(path), "--out-dir", str(tmp_path / "o")]) == 2
    assert "'annotations' is missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fraction must be in"):
        split_ytvis.split_ytvis({"videos": [], "annotations": []}, 1.0, 0)
    with pytest.raises(ValueError, match="at least 2"):
        split_ytvis.split_ytvis({"videos": [{"id": 1}], "annotations": []}, 0.5, 0)
    with pytest.raises(ValueError, match="unknown video_id 5"):
        split_ytvis.split_ytvis({"videos": [{"id": 1}, {"id": 2}], "annotations": [{"video_id": 5}]}, 0.5, 0)
    assert not os.path.exists(tmp_path / "o")
