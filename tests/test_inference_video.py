"""Full-video inference: streaming bounds, short videos, and the evaluate / infer entry points."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stemseg_jax.inference.clustering import (
    cluster_clip,
    cluster_clip_per_class,
    clustering_options,
    free_dim_bandwidths,
)
from stemseg_jax.inference.linking import TrackChainer
from stemseg_jax.inference.schedule import clip_schedule, collapse_repeated_frames
from stemseg_jax.inference.video import VideoSegmenter
from stemseg_jax.model import build_model
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
    # KITTI's class mode: per-track votes over (background, car, pedestrian) that add up to the track's pixels
    assert set(result.track_classes) == set(result.linked.order)
    assert all(result.track_classes[k].sum() == result.linked.pixel_counts[k] for k in result.linked.order)
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


# ------------------------------------------------------------------------------------------ streaming == per clip
# The streaming segmenter (backbone once per frame, heads per clip, outputs dropped as soon as possible) against a
# reference that holds everything: the whole model on every clip of the schedule, the foreground of each frame from
# its outputs averaged over all clips that contain it, every clip clustered and the clips linked in order.

# clip length 4, overlap 2 and 64x96 frames as in ``segmenter`` above, so KITTI's compilations are shared (cache)
STREAM_CLIP, STREAM_OVERLAP, STREAM_HW = 4, 2, (64, 96)


def _stream_config(name: str):
    config = load_config(name, "tiny")
    config.data.num_frames = STREAM_CLIP
    config.inference.frame_overlap = STREAM_OVERLAP
    # frames already at the network's input size (multiples of 32): no resize, no padding
    config.data.min_dim, config.data.max_dim = STREAM_HW
    config.inference.min_dim, config.inference.max_dim = STREAM_HW
    config.inference.resize_embeddings = False
    config.inference.cluster_per_class = False  # one case turns it on
    # untrained weights give seediness ~0.3-0.6: let seeds through, and (DAVIS, no semantic head) put the
    # seediness foreground threshold near its median so the mask is partial and depends on the averaging
    config.inference.min_seediness_prob = 0.5
    config.inference.seediness_fg_threshold = 0.45
    return config


def _moving_rectangles(n: int, seed: int = 0) -> np.ndarray:
    """``[n, 64, 96, 3]`` uint8: noise with two rectangles crossing the frame in opposite directions."""
    frames = np.random.default_rng(seed).integers(0, 255, (n, *STREAM_HW, 3), np.uint8)
    for t in range(n):
        frames[t, 10:40, 10 + t : 40 + t] = (30, 200, 90)
        frames[t, 40:60, 70 - t : 90 - t] = (200, 30, 90)
    return frames


def _random_variables(config) -> dict:
    """Random weights with calibrated frozen BatchNorm: ``init_state``'s variables without its optimizer state
    (whose set-up costs ~10 s on 2 cores)."""
    images = jnp.asarray(_moving_rectangles(STREAM_CLIP)[None])
    variables = jax.jit(build_model(config).init)(jax.random.PRNGKey(0), images)
    calibrating = build_model(config, calibrate_bn=True)
    _, updated = jax.jit(lambda v, x: calibrating.apply(v, x, mutable=["frozen_bn"]))(variables, images)
    return {**variables, **updated}


@pytest.fixture(scope="module")
def stream_setup():
    """name -> (config, variables, apply), built once per config for the module. ``apply(variables, clip)`` runs
    the backbone on each frame alone and the heads on the clip, as a frame-at-a-time network would: XLA:CPU
    rounds a 4-frame backbone batch differently (~3e-5), and the comparison below is exact."""
    cache = {}

    def get(name):
        if name not in cache:
            config = _stream_config(name)
            model = build_model(config)
            backbone = jax.jit(lambda v, x: model.apply(v, x, method="backbone_features"))
            heads = jax.jit(lambda v, f: model.apply(v, f, method="heads"))

            def apply(variables, clip, backbone=backbone, heads=heads):
                per_frame = [backbone(variables, clip[:, t]) for t in range(clip.shape[1])]
                return heads(variables, tuple(jnp.stack([f[lvl] for f in per_frame], axis=1) for lvl in range(4)))

            cache[name] = (config, _random_variables(config), apply)
        return cache[name]

    return get


def _reference_tracks(config, variables, apply, frames, average_over_clips=True):
    """Non-streaming STEm-Seg inference: every clip's whole-model outputs held at once.

    ``average_over_clips=False`` (a deliberately wrong variant) takes each frame's foreground from the last clip
    containing it alone.
    """
    num_frames = len(frames)
    clips = clip_schedule(num_frames, config.data.num_frames, config.inference.frame_overlap)
    outs = [jax.tree.map(np.asarray, apply(variables, frames[np.asarray(clip)][None])) for clip in clips]
    semantic = config.model.use_semseg_head
    assert not semantic or config.model.foreground_channel
    # per frame, the sum over its clips of the semantic logits (every copy of a repeated frame counts) or,
    # without a semantic head, of the seediness (the last copy, like the embeddings)
    sums, counts = {}, {}
    for clip, out in zip(clips, outs, strict=True):
        if semantic:
            per_frame = [(f, out["semseg_logits"][0, p]) for p, f in enumerate(clip)]
        else:
            unique, positions = collapse_repeated_frames(clip)
            per_frame = [(f, out["seediness"][0, p]) for f, p in zip(unique, positions, strict=True)]
        for f, x in per_frame:
            if average_over_clips:
                sums[f], counts[f] = sums.get(f, 0.0) + x, counts.get(f, 0) + 1
            else:  # the latest output alone
                sums[f], counts[f] = x, 1
    means = {f: sums[f] / counts[f] for f in sums}
    if semantic:
        foreground = {f: m[..., -1] > 0.0 for f, m in means.items()}  # sigmoid(logit) > 0.5
    else:
        foreground = {f: m > config.inference.seediness_fg_threshold for f, m in means.items()}
    free = np.asarray(variables.get("buffers", {}).get("free_dim_bandwidths", free_dim_bandwidths(config))).reshape(-1)
    options = clustering_options(config)
    chainer = TrackChainer(num_frames)
    for clip, out in zip(clips, outs, strict=True):
        unique, positions = collapse_repeated_frames(clip)
        emb = out["embeddings"][0, positions]
        bw = jnp.exp(out["bandwidth_logits"][0, positions]) * 10.0
        seed = out["seediness"][0, positions]
        fg = np.stack([foreground[f] for f in unique])
        if config.inference.cluster_per_class:
            num_classes = config.model.num_classes
            classes = np.stack([1 + np.argmax(means[f][..., 1:num_classes], axis=-1) for f in unique])
            labels = cluster_clip_per_class(emb, bw, seed, fg, classes, free, compact=True, **options)
        else:
            labels = cluster_clip(emb, bw, seed, jnp.asarray(fg), free, compact=True, **options)
        chainer.add_clip(unique, np.asarray(labels))
    fg_share = float(np.mean([foreground[f].mean() for f in foreground]))
    return chainer.result(), len(clips), fg_share


def _same_tracks(a, b) -> bool:
    return np.array_equal(a.label_maps, b.label_maps) and a.pixel_counts == b.pixel_counts and a.order == b.order


@pytest.mark.parametrize(
    "name,per_class,length",
    [("kitti", False, 21), ("kitti", True, 21), ("davis", False, 21), ("kitti", False, 3), ("davis", False, 3)],
)
def test_streaming_equals_per_clip_reference(stream_setup, name, per_class, length):
    """21 frames at clip length 4, overlap 2: clips start at 0, 2, ..., 16 and a last one at 17 (overlap 3), so a
    frame is in up to three clips; three frames: one clip with frame 0 twice. KITTI: foreground from the semantic
    head's foreground channel, also clustered per class; DAVIS: from the seediness."""
    config, variables, apply = stream_setup(name)
    if per_class:
        config = config.copy_and_resolve_references()
        config.inference.cluster_per_class = True
    frames = _moving_rectangles(length, seed=1)
    streamed = VideoSegmenter(config, variables).segment(lambda t: frames[t], length, STREAM_HW).linked
    reference, num_clips, fg_share = _reference_tracks(config, variables, apply, frames)
    # the comparison is not vacuous: several tracks, several clips, a partial foreground mask
    assert len(reference.order) > 1
    assert num_clips == (10 if length == 21 else 1)
    assert 0.1 < fg_share < 0.9
    assert streamed.label_maps.shape == (length, 16, 24)
    np.testing.assert_array_equal(streamed.label_maps, reference.label_maps)
    assert streamed.pixel_counts == reference.pixel_counts
    assert streamed.order == reference.order
    if num_clips > 1:  # and the averaging over clips matters here: without it the tracks differ
        unaveraged, _, _ = _reference_tracks(config, variables, apply, frames, average_over_clips=False)
        assert not _same_tracks(unaveraged, reference)
