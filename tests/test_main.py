"""The entry point: mode handling, missing data, and train -> evaluate -> infer end to end on synthetic data."""

import json
import os

import pytest
from absl import app

from stemseg_jax.data.synthetic import generate
from stemseg_jax.main import check_dataset_paths, run
from tests.helpers import load_config


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(app.UsageError, match="unknown --mode 'fit'.*train, evaluate, infer, smoke"):
        run(load_config("kitti", "tiny"), "/tmp/unused", "fit")


def test_missing_training_data_names_the_config_field(monkeypatch):
    monkeypatch.delenv("KITTI_MOTS_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"config.data.datasets.kitti_mots.root = '\$KITTI_MOTS_DIR'"):
        check_dataset_paths(load_config("kitti"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    generate("kitti_mots", root, seed=1, num_train=2, num_val=1, num_frames=10, height=64, width=96)
    os.environ["STEMSEG_DEMO_DATA"] = root
    config = load_config("kitti", "tiny,demo")
    assert len(config.data.datasets) == 4  # the demo's extra training sets (tools/demo.sh); one is enough here
    config.data.datasets = {"kitti_mots": config.data.datasets.kitti_mots}
    config.data.num_frames = 4
    config.inference.frame_overlap = 2
    config.data.min_dim, config.data.max_dim = 64, 96
    config.inference.min_dim, config.inference.max_dim = 64, 96
    config.data.num_workers = 0
    config.train.num_steps, config.train.decay_start = 3, 2
    config.train.image_summary_every = 2
    workdir = str(tmp_path_factory.mktemp("run"))
    assert run(config, workdir, "train") == 0
    return config, workdir, root


@pytest.mark.slow
def test_train_then_evaluate_writes_results_and_metrics(trained):
    config, workdir, _ = trained
    config.inference.min_seediness_prob = 0.0  # an untrained model: make sure tracks are written
    assert run(config, workdir, "evaluate") == 0
    out = os.path.join(workdir, "eval", "kitti_mots")
    with open(os.path.join(out, "metrics.json")) as f:
        summary = json.load(f)
    assert summary["frames"] == 10 and summary["videos"] == 1
    assert set(summary["metrics"]["classes"]) == {"car", "pedestrian"}
    assert os.path.getsize(os.path.join(out, "results", "0002.txt")) > 0
    assert os.path.isdir(os.path.join(workdir, "tensorboard"))


@pytest.mark.slow
def test_infer_on_a_frame_folder_writes_masks_mp4_and_gif(trained):
    config, workdir, root = trained
    config.inference.input = os.path.join(root, "training", "image_02", "0002")
    assert run(config, workdir, "infer") == 0
    out = os.path.join(workdir, "infer", "0002")
    assert len(os.listdir(os.path.join(out, "masks"))) == 10
    assert os.path.getsize(os.path.join(out, "overlay.mp4")) > 0
    assert os.path.getsize(os.path.join(out, "overlay.gif")) > 0
