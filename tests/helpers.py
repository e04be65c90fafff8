"""Small helpers shared by the tests."""

import os

from stemseg_jax.config import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, variant: str | None = None):
    """``load_config("kitti", "tiny")`` -> the ConfigDict of ``configs/kitti.py:tiny``."""
    path = os.path.join(REPO, "configs", f"{name}.py")
    return load_config_file(f"{path}:{variant}" if variant else path)


def tiny_train_config(data_root: str):
    """A 4-step ``kitti.py:tiny`` training run on synthetic KITTI-MOTS data at ``data_root``; the shapes are
    shared by the training tests, so their compiled steps come from the cache."""
    config = load_config("kitti", "tiny")
    config.data.num_frames = 4
    config.data.min_dim, config.data.max_dim = 64, 96
    config.data.max_instances = 4
    config.data.num_workers = 0
    config.data.datasets.kitti_mots.root = data_root
    config.data.datasets.kitti_mots.sequences = ("0000", "0001")
    config.train.num_steps = 4
    config.train.decay_start = 2
    config.train.checkpoint_every = 2
    config.train.image_summary_every = 0
    return config
