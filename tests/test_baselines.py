"""The proposal-based baselines as methods: the seam (METHODS, --mode train / evaluate), precomputed proposals
through every tracker on real benchmark formats, and (slow) a tiny Mask R-CNN + re-id trained and evaluated."""

import json
import os

import numpy as np
import pytest

from stemseg_jax import methods, tracking
from stemseg_jax.data import load_dataset
from stemseg_jax.data.synthetic import generate
from stemseg_jax.methods import proposal_trackers
from stemseg_jax.runner import evaluate_split
from tests.helpers import load_config

FORMATS = {"davis": ("davis", "davis"), "kitti": ("kitti_mots", "kitti")}


@pytest.fixture(scope="module")
def davis_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("davis"))
    generate("davis", root, 0, num_train=3, num_val=2, num_frames=8)
    return root


@pytest.fixture(scope="module")
def kitti_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("kitti"))
    # Long enough for pedestrians: the official post-processing drops tracks of fewer than 10 detections.
    generate("kitti_mots", root, 0, num_train=2, num_val=2, num_frames=30)
    return root


def _config(variant: str, data_root: str, monkeypatch, method: str):
    monkeypatch.setenv("STEMSEG_DEMO_DATA", data_root)
    config = load_config("maskrcnn", f"{variant},tiny,demo")
    config.method = method
    return config


def _gt_proposals(config, out_dir: str, rng: np.random.Generator, drop_every: int = 0,
                  identity_scores: bool = False) -> None:
    """Writes the val split's ground truth as proposal files, in shuffled order with random scores (and with
    ``drop_every``, one frame in that many missing each object: a detector's misses; with ``identity_scores``
    the score is 0.6 + index / 1000 of the instance, for ``_identity_embedder``)."""
    for record in load_dataset(config.data.val_dataset, "data.val_dataset"):
        ids = list(record.instance_ids)
        masks, _ = record.masks.load(range(record.num_frames), ids)
        frames = []
        for t in range(record.num_frames):
            keep = [i for i in range(len(ids)) if masks[i, t].any() and not (drop_every and (t + i) % drop_every == 0)]
            order = rng.permutation(keep).astype(int) if keep else np.zeros(0, int)
            cats = [1 if config.data.class_agnostic else record.categories[ids[i]] for i in order]
            scores = 0.6 + order / 1000 if identity_scores else rng.uniform(0.6, 1.0, len(order))
            frames.append(tracking.FrameProposals(
                masks=masks[order, t] if len(order) else np.zeros((0, record.height, record.width), bool),
                scores=scores.astype(np.float32), categories=np.asarray(cats, np.int32)))
        names = [os.path.basename(p) for p in record.frame_paths]
        tracking.save_proposals(tracking.proposals_path(out_dir, record.name), record.name, names, frames)


def test_methods_table_and_errors():
    assert {"stemseg", "of_tracker", "ri_tracker", "unovost"} <= set(methods.METHODS)
    config = load_config("maskrcnn", "davis,tiny")
    config.method = "of_trackr"
    with pytest.raises(ValueError, match="unknown method.*of_tracker"):
        methods.get_method(config)
    config.method = "of_tracker"
    config.proposals.dir = "/somewhere"
    with pytest.raises(ValueError, match="proposals.dir is set"):
        methods.train_method(config, "/tmp/unused")
    config.proposals.dir = ""
    with pytest.raises(FileNotFoundError, match="maskrcnn/checkpoints.*config.proposals.checkpoint"):
        methods.build_method(config, "/nonexistent/workdir", None)


def test_the_benchmark_variants_keep_the_benchmark_and_classes():
    for variant, benchmark, classes in (("davis", "davis", 2), ("kitti", "kitti_mots", 3),
                                        ("youtube_vis", "ytvis", 41)):
        config = load_config("maskrcnn", variant)
        assert config.inference.benchmark == benchmark
        assert config.proposals.model.num_classes == classes == config.model.num_classes
    assert load_config("maskrcnn", "kitti").method == "unovost"
    with pytest.raises(ValueError, match="one benchmark variant"):
        load_config("maskrcnn", "davis,kitti")


@pytest.mark.parametrize("method", ["of_tracker", "unovost_without_reid"])
def test_ground_truth_proposals_through_a_tracker_score_high_on_davis(davis_data, tmp_path, monkeypatch, method):
    config = _config("davis", davis_data, monkeypatch, "of_tracker")
    config.proposals.dir = str(tmp_path / "proposals")
    _gt_proposals(config, config.proposals.dir, np.random.default_rng(0))
    if method == "unovost_without_reid":
        # Without re-id UnOVOST's merging has nothing to go on: zero embeddings, merge_distance 0 (off).
        config.tracker.unovost.merge_distance = 0.0
        segmenter = proposal_trackers.ProposalTrackerSegmenter(
            link=lambda frames, props, emb: tracking.unovost_track(
                frames, props, [np.zeros((len(p), 4), np.float32) for p in props],
                tracking.get_flow("dis"), dict(config.tracker.unovost)),
            proposer=None, embedder=None, num_classes=2, class_mode=None, proposals_dir=config.proposals.dir)
        monkeypatch.setattr("stemseg_jax.runner.build_method", lambda *a: segmenter)
    summary = evaluate_split(config, str(tmp_path / "run"))
    assert summary["method"] == "of_tracker"
    jf = summary["metrics"]["global"]["J&F-Mean"]
    assert jf > 0.95, summary["metrics"]["global"]


def _identity_embedder(frame, props):
    """A perfect re-id network for ``_gt_proposals(identity_scores=True)``: the instance index is in the score."""
    k = np.rint((props.scores - 0.6) * 1000).astype(int)
    return np.eye(16, dtype=np.float32)[k]


def test_kitti_classes_and_ids_through_missed_detections(kitti_data, tmp_path, monkeypatch):
    """KITTI-MOTS: classes from the proposals' categories; with a detector that misses one frame in four, the
    RI-Tracker's memory (tracker.ri_max_gap) keeps every id, while the OF-Tracker, which links adjacent frames
    only, starts new ones."""
    config = _config("kitti", kitti_data, monkeypatch, "ri_tracker")
    config.proposals.dir = str(tmp_path / "proposals")
    tc = config.tracker

    def ri_segmenter(*_):
        make = lambda: tracking.RITracker(max_distance=float(tc.ri_max_distance), max_gap=int(tc.ri_max_gap))  # noqa: E731
        return proposal_trackers.ProposalTrackerSegmenter(
            link=proposal_trackers._online(make, False, True), proposer=None, embedder=_identity_embedder,
            num_classes=3, class_mode="pixel_votes", proposals_dir=config.proposals.dir)

    monkeypatch.setattr("stemseg_jax.runner.build_method", ri_segmenter)
    _gt_proposals(config, config.proposals.dir, np.random.default_rng(1), identity_scores=True)
    perfect = evaluate_split(config, str(tmp_path / "perfect"))["metrics"]["classes"]
    for name in ("car", "pedestrian"):
        assert perfect[name]["mots_tools"]["sMOTSA"] > 0.9, (name, perfect[name]["mots_tools"])
    _gt_proposals(config, config.proposals.dir, np.random.default_rng(1), identity_scores=True, drop_every=4)
    missed = evaluate_split(config, str(tmp_path / "missed"))["metrics"]["classes"]
    for name in ("car", "pedestrian"):
        m = missed[name]["mots_tools"]
        assert m["id_switches"] == 0 and m["recall"] < perfect[name]["mots_tools"]["recall"], (name, m)
    monkeypatch.undo()
    monkeypatch.setenv("STEMSEG_DEMO_DATA", kitti_data)
    config.method = "of_tracker"
    of = evaluate_split(config, str(tmp_path / "of"))["metrics"]["classes"]
    assert of["car"]["mots_tools"]["id_switches"] + of["pedestrian"]["mots_tools"]["id_switches"] > 0


def test_a_bad_proposal_file_is_one_error_naming_it(davis_data, tmp_path, monkeypatch):
    config = _config("davis", davis_data, monkeypatch, "of_tracker")
    config.proposals.dir = str(tmp_path / "proposals")
    _gt_proposals(config, config.proposals.dir, np.random.default_rng(0))
    victim = sorted(os.listdir(config.proposals.dir))[0]
    path = os.path.join(config.proposals.dir, victim)
    with open(path) as fh:
        data = json.load(fh)
    data["results"][3]["score"] = "high"
    with open(path, "w") as fh:
        json.dump(data, fh)
    with pytest.raises(ValueError, match=rf"{victim}, result 3 .*'score'"):
        evaluate_split(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_tiny_maskrcnn_and_reid_train_then_every_tracker_evaluates(davis_data, tmp_path, monkeypatch):
    """The real path: --mode train of ri_tracker (Mask R-CNN, then re-id) through main, a few steps each, then
    --mode evaluate of each tracker (the OF-Tracker saving its proposals, which UnOVOST then reads)."""
    from stemseg_jax.main import run

    config = _config("davis", davis_data, monkeypatch, "ri_tracker")
    config.proposals.train.num_steps, config.proposals.train.decay_start = 4, 2
    config.reid.num_steps, config.reid.decay_start = 3, 1
    workdir = str(tmp_path / "run")
    assert run(config, workdir, "train") == 0
    assert os.path.isdir(os.path.join(workdir, "maskrcnn", "checkpoints", "4"))
    assert os.path.isdir(os.path.join(workdir, "reid", "checkpoints", "3"))
    config.proposals.min_score = 0.0  # an untrained detector's scores are low: keep every detection
    config.method = "of_tracker"
    config.proposals.save_dir = str(tmp_path / "saved")
    of = evaluate_split(config, workdir)
    assert 0.0 <= of["metrics"]["global"]["J&F-Mean"] <= 1.0
    saved = sorted(os.listdir(config.proposals.save_dir))
    assert len(saved) == 2
    config.method, config.proposals.save_dir = "ri_tracker", ""
    ri = evaluate_split(config, workdir)
    assert ri["inference_timings"]["reid"] > 0
    config.method, config.proposals.dir = "unovost", str(tmp_path / "saved")
    uv = evaluate_split(config, workdir)
    assert uv["inference_timings"]["proposals"] < of["inference_timings"]["proposals"]  # read, not detected


def test_compare_tool_configs_and_table():
    import sys

    from tests.helpers import REPO

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import compare_baselines

    args = compare_baselines.parse_args(["--workdir", "w", "--stemseg-steps", "30", "--maskrcnn-steps", "60",
                                         "--reid-steps", "9"])
    stem = compare_baselines.method_config("davis", "stemseg", args)
    assert (stem.method, stem.train.num_steps, stem.train.decay_start) == ("stemseg", 30, 20)
    for method in ("of_tracker", "ri_tracker", "unovost"):
        c = compare_baselines.method_config("kitti_mots", method, args)
        assert c.method == method and c.inference.benchmark == "kitti_mots"
        assert (c.proposals.train.num_steps, c.reid.num_steps) == (60, 9)
    rows = [{"method": "stemseg", "fps": 2.5, "metrics": {"J&F": 0.7, "J": 0.65, "F": 0.75}},
            {"method": "of_tracker", "fps": 10.0, "metrics": {"J&F": 0.5, "J": 0.45, "F": 0.55}}]
    table = compare_baselines.markdown_table(rows).splitlines()
    assert table[0] == "| method | J&F | J | F | frames/s | train s |"
    assert table[3] == "| of_tracker | 50.0 | 45.0 | 55.0 | 10.00 | 0 |"
    assert compare_baselines.main(["--workdir", "w", "--methods", "stemseg,nope"]) == 2
