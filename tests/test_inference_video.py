"""Full-video inference: streaming bounds, short videos, and the evaluate / infer entry points."""

import jax
import numpy as np
import pytest

from stemseg_jax.inference.video import VideoSegmenter
from stemseg_jax.train.trainer import init_state
from tests.helpers import load_config


def _video(n, h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (n, h, w, 3), np.uint8)
    for t in range(n):
        frames[t, 10:40, 10 + t % 20 : 40 + t % 20] = (30, 200, 90)
    return frames


@pytest.fixture(scope="module")
def segmenter():
    config = load_config("kitti", "tiny")
    config.data.num_frames = 4
    config.inference.frame_overlap = 2
    config.data.min_dim, config.data.max_dim = 64, 96
    config.inference.min_dim, config.inference.max_dim = 64, 96
    config.inference.min_seediness_prob = 0.3  # untrained weights: let some clusters form
    state = init_state(config, np.zeros((1, 4, 64, 96, 3), np.uint8), jax.random.PRNGKey(0))
    return VideoSegmenter(config, {"params": state["params"], **state["constants"]})


@pytest.mark.parametrize("length", [3, 4, 9, 40])
def test_every_frame_gets_labels_and_memory_is_bounded(segmenter, length):
    frames = _video(length)
    result = segmenter.segment(lambda t: frames[t], length, frames.shape[1:3])
    assert result.linked.label_maps.shape == (length, 16, 24)
    assert len(result.class_info) == length and all(c is not None for c in result.class_info)
    assert all(c.shape == (16, 24) for c in result.class_info)
    # clip length 4, stride 2: bounds set by the clip structure, never by the video's length
    assert segmenter.peak_held["frame_features"] <= 4
    assert segmenter.peak_held["pending_clips"] <= 3
    assert segmenter.peak_held["frame_accumulators"] <= 8


def test_per_class_clustering_runs_and_needs_the_semantic_head(segmenter, monkeypatch):
    frames = _video(9, seed=2)
    monkeypatch.setattr(segmenter, "cluster_per_class", True)
    result = segmenter.segment(lambda t: frames[t], 9, frames.shape[1:3])
    assert result.linked.label_maps.shape == (9, 16, 24)
    config = segmenter.config.copy_and_resolve_references()
    config.inference.cluster_per_class = True
    config.model.use_semseg_head = False
    with pytest.raises(ValueError, match="cluster_per_class.*use_semseg_head"):
        VideoSegmenter(config, segmenter.variables)


def test_frame_loader_is_called_once_per_frame(segmenter):
    frames = _video(15, seed=1)
    calls = []

    def load(t):
        calls.append(t)
        return frames[t]

    segmenter.segment(load, 15, frames.shape[1:3])
    assert sorted(calls) == list(range(15))
