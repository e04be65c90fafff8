"""Small helpers shared by the tests."""

import os

from stemseg_jax.config import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, variant: str | None = None):
    """``load_config("kitti", "tiny")`` -> the ConfigDict of ``configs/kitti.py:tiny``."""
    path = os.path.join(REPO, "configs", f"{name}.py")
    return load_config_file(f"{path}:{variant}" if variant else path)
