"""Inference post-processing: clip schedule, clustering, linking and per-benchmark track selection (spec §6)."""

import json

import jax
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from stemseg_jax.benchmarks.davis import select_tracks_davis, write_davis_outputs
from stemseg_jax.benchmarks.kitti_mots import kitti_detections, select_tracks_kitti, write_kitti_outputs
from stemseg_jax.benchmarks.masks import masks_to_original, resolve_overlaps
from stemseg_jax.benchmarks.ytvis import select_tracks_ytvis
from stemseg_jax.evaluation.writers import write_ytvis_results
from stemseg_jax.inference import (
    TrackChainer,
    clip_schedule,
    cluster_clip,
    cluster_clip_per_class,
    collapse_repeated_frames,
)
from stemseg_jax.inference.linking import _iou_matrix
from stemseg_jax.results import linked_from_label_maps, track_class_scores

OFFICIAL = dict(min_seediness=0.8, primary_threshold=0.5, secondary_threshold=0.3)


# ----------------------------------------------------------------------------------------------- references
def reference_clusterer(emb, bw, seed, free_bw, *, min_seediness, primary_threshold, secondary_threshold,
                        max_instances, distance, secondary):
    """Float64 NumPy transcription of the official SequentialClustering loop over gathered fg points.

    Keeps the official [N, K] distance table with 1e8 for unavailable points and the availability mask of
    the last loop iteration; ``secondary="nearest"`` swaps the max for a min.
    """
    emb, seed = np.asarray(emb, np.float64), np.asarray(seed, np.float64)
    bw = np.concatenate([np.asarray(bw, np.float64), np.broadcast_to(free_bw, (len(emb), len(free_bw)))], axis=1)
    labels = np.full(len(emb), -1)
    table, available = [], None
    num_unassigned = len(emb)
    for k in range(max_instances):
        available = labels == -1
        num_unassigned = available.sum()
        if num_unassigned == 0:
            break
        idx = np.flatnonzero(available)[np.argmax(seed[available])]
        if seed[idx] < min_seediness:
            break
        d2 = np.sum(bw[idx] * (emb - emb[idx]) ** 2, axis=1)
        dist = np.sqrt(d2) if distance == "sqrt" else d2
        dist = np.where(available, dist, 1e8)
        table.append(dist)
        labels[available & (np.exp(-0.5 * dist) > primary_threshold)] = k
    if num_unassigned > 0 and table:
        table = np.stack(table, axis=1)
        pick = np.argmax(table, axis=1) if secondary == "farthest" else np.argmin(table, axis=1)
        chosen = table[np.arange(len(emb)), pick]
        update = available & (np.exp(-0.5 * chosen) > secondary_threshold)
        labels[update] = pick[update]
    return labels


def bilinear_matrix(n_out, n_in, scale=None):
    """``[n_out, n_in]`` half-pixel bilinear interpolation (PyTorch align_corners=False, no antialias)."""
    scale = n_in / n_out if scale is None else scale
    src = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, None)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def reference_chain(mask, scale, resized_hw, original_hw):
    """Float64 values of the mask chain before the ``> 0.5`` threshold."""
    h, w = mask.shape
    up = bilinear_matrix(h * scale, h) @ mask.astype(np.float64) @ bilinear_matrix(w * scale, w).T
    up = up[: resized_hw[0], : resized_hw[1]]
    return bilinear_matrix(original_hw[0], resized_hw[0]) @ up @ bilinear_matrix(original_hw[1], resized_hw[1]).T


def decode(rle):
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def random_clip(rng, shape=(3, 6, 7), n_centres=4, n_free=0, spread=0.25):
    """Embeddings scattered around a few nearby centres (close enough for the secondary step to matter)."""
    e_coord = 3
    centres = rng.uniform(-0.4, 0.4, (n_centres, e_coord + n_free))
    owner = rng.integers(0, n_centres, shape)
    emb = centres[owner] + rng.normal(0, spread, (*shape, e_coord + n_free))
    bw = rng.uniform(2, 10, (*shape, e_coord))
    seed = rng.uniform(0.3, 1.0, shape)
    fg = rng.random(shape) < 0.8
    return emb.astype(np.float32), bw.astype(np.float32), seed.astype(np.float32), fg


# ----------------------------------------------------------------------------------------------- schedule
def test_schedule_regular_and_appended_last_clip():
    assert clip_schedule(16, 8, 4) == [list(range(s, s + 8)) for s in (0, 4, 8)]
    # 18 frames: 0..7, 4..11, 8..15 fit; [10, 17] is appended with an overlap of 6 > 4.
    clips = clip_schedule(18, 8, 4)
    assert clips[:3] == [list(range(s, s + 8)) for s in (0, 4, 8)]
    assert clips[3] == list(range(10, 18))
    assert len(clips) == 4
    # DAVIS: T = 16, overlap 6, stride 10.
    assert [c[0] for c in clip_schedule(50, 16, 6)] == [0, 10, 20, 30, 34]


def test_schedule_video_as_long_as_a_clip_and_shorter():
    assert clip_schedule(8, 8, 4) == [list(range(8))]
    assert clip_schedule(5, 8, 4) == [[0, 0, 0, 0, 1, 2, 3, 4]]
    assert clip_schedule(1, 8, 4) == [[0] * 8]
    frames, positions = collapse_repeated_frames([0, 0, 0, 0, 1, 2, 3, 4])
    assert frames == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(positions, [3, 4, 5, 6, 7])  # the last copy of frame 0 is kept
    with pytest.raises(ValueError, match="overlap"):
        clip_schedule(10, 8, 8)
    with pytest.raises(ValueError, match="at least one frame"):
        clip_schedule(0, 8, 4)


def test_schedule_covers_every_frame_with_consistent_overlaps():
    for length in range(1, 40):
        clips = clip_schedule(length, 8, 3)
        assert sorted({f for c in clips for f in c}) == list(range(length))
        for a, b in zip(clips, clips[1:]):
            assert len(set(a) & set(b)) >= 3 and b[0] > a[0]


# ----------------------------------------------------------------------------------------------- clustering
def test_cluster_spec_example_official_and_default():
    emb = np.array([0.0, 1.0, 0.45], np.float32).reshape(1, 1, 3, 1)
    bw = np.full((1, 1, 3, 1), 12.25, np.float32)
    seed = np.array([0.99, 0.95, 0.1], np.float32).reshape(1, 1, 3)
    fg = np.ones((1, 1, 3), bool)
    official = cluster_clip(emb, bw, seed, fg, **OFFICIAL, distance="sqrt", secondary="farthest")
    np.testing.assert_array_equal(np.asarray(official).ravel(), [0, 1, 1])  # the official [1, 2, 2]
    nearest = cluster_clip(emb, bw, seed, fg, **OFFICIAL, distance="sqrt", secondary="nearest")
    np.testing.assert_array_equal(np.asarray(nearest).ravel(), [0, 1, 0])
    # Training's exp(-D2/2) gives the 0.45 point P = exp(-1.24) < 0.3 under both clusters: an outlier.
    squared = cluster_clip(emb, bw, seed, fg, **OFFICIAL, distance="squared", secondary="nearest")
    np.testing.assert_array_equal(np.asarray(squared).ravel(), [0, 1, -1])


def test_cluster_last_iteration_bookkeeping():
    """After max_instances full iterations the last cluster's points can be relabelled (official)."""
    emb = np.array([0.0, 0.6], np.float32).reshape(1, 1, 2, 1)
    bw = np.full((1, 1, 2, 1), 12.25, np.float32)
    seed = np.array([0.99, 0.95], np.float32).reshape(1, 1, 2)
    fg = np.ones((1, 1, 2), bool)
    args = dict(**OFFICIAL, distance="sqrt")
    # D(point 1, cluster 0) = 2.1: P = 0.35, not primary (0.5) but above the secondary threshold (0.3).
    two = cluster_clip(emb, bw, seed, fg, **args, max_instances=2, secondary="farthest")
    np.testing.assert_array_equal(np.asarray(two).ravel(), [0, 0])
    three = cluster_clip(emb, bw, seed, fg, **args, max_instances=3, secondary="farthest")
    np.testing.assert_array_equal(np.asarray(three).ravel(), [0, 1])
    near = cluster_clip(emb, bw, seed, fg, **args, max_instances=2, secondary="nearest")
    np.testing.assert_array_equal(np.asarray(near).ravel(), [0, 1])


@pytest.mark.parametrize("distance", ["squared", "sqrt"])
@pytest.mark.parametrize("secondary", ["nearest", "farthest"])
def test_cluster_matches_reference_on_random_clips(distance, secondary):
    rng = np.random.default_rng(7)
    checked_secondary = 0
    for trial in range(6):
        n_free = trial % 2
        emb, bw, seed, fg = random_clip(rng, n_free=n_free)
        free_bw = np.full(n_free, 1 / 0.3**2, np.float32)
        for max_instances in (3, 20):
            opts = dict(**OFFICIAL, max_instances=max_instances, distance=distance, secondary=secondary)
            got = np.asarray(cluster_clip(emb, bw, seed, fg, free_bw, **opts))
            want = reference_clusterer(emb[fg], bw[fg], seed[fg], free_bw, **opts)
            assert (got[~fg] == -1).all()
            np.testing.assert_array_equal(got[fg], want, err_msg=f"trial {trial}, max_instances {max_instances}")
            if max_instances == 20:
                compacted = np.asarray(cluster_clip(emb, bw, seed, fg, free_bw, **opts, compact=True))
                np.testing.assert_array_equal(compacted, got)
            primary_only = reference_clusterer(emb[fg], bw[fg], seed[fg], free_bw, **{**opts, "secondary_threshold": 2})
            checked_secondary += int((primary_only != want).sum())
    assert checked_secondary > 0  # the random clips do exercise the secondary assignment


def test_cluster_ignores_background_and_rejects_bad_shapes():
    rng = np.random.default_rng(1)
    emb, bw, seed, fg = random_clip(rng)
    seed_bg = np.where(fg, seed, 1.0)  # background pixels with maximal seediness must not become seeds
    a = np.asarray(cluster_clip(emb, bw, seed, fg, **OFFICIAL))
    b = np.asarray(cluster_clip(emb, bw, seed_bg, fg, **OFFICIAL))
    np.testing.assert_array_equal(a, b)
    none = np.asarray(cluster_clip(emb, bw, seed, np.zeros_like(fg), **OFFICIAL))
    assert (none == -1).all()
    assert (np.asarray(cluster_clip(emb, bw, seed, np.zeros_like(fg), **OFFICIAL, compact=True)) == -1).all()
    with pytest.raises(ValueError, match="free dims"):
        cluster_clip(emb, bw[..., :2], seed, fg, **OFFICIAL)
    with pytest.raises(ValueError, match="distance"):
        cluster_clip(emb, bw, seed, fg, **OFFICIAL, distance="cosine")
    with pytest.raises(ValueError, match="outside jax.jit"):
        jax.jit(lambda f: cluster_clip(emb, bw, seed, f, **OFFICIAL, compact=True))(fg)


def test_cluster_per_class_keeps_a_pedestrian_out_of_the_car_in_front_of_it():
    """A wide car Gaussian seeded first takes in the pedestrian's points when all are clustered together."""
    emb = np.array([0.0, 0.1, 0.2, 0.55, 0.6], np.float32).reshape(1, 1, 5, 1)
    bw = np.array([2.0, 2.0, 2.0, 20.0, 20.0], np.float32).reshape(1, 1, 5, 1)
    seed = np.array([0.99, 0.9, 0.9, 0.97, 0.9], np.float32).reshape(1, 1, 5)
    fg = np.ones((1, 1, 5), bool)
    classes = np.array([1, 1, 1, 2, 2]).reshape(1, 1, 5)  # car, car, car, pedestrian, pedestrian
    joint = np.asarray(cluster_clip(emb, bw, seed, fg, **OFFICIAL))
    np.testing.assert_array_equal(joint.ravel(), [0, 0, 0, 0, 0])
    per_class = cluster_clip_per_class(emb, bw, seed, fg, classes, **OFFICIAL)
    np.testing.assert_array_equal(per_class.ravel(), [0, 0, 0, 1, 1])


def test_cluster_per_class_is_cluster_clip_on_each_class_with_numbering_carried_on():
    rng = np.random.default_rng(3)
    for trial in range(4):
        emb, bw, seed, fg = random_clip(rng)
        classes = rng.integers(1, 4, fg.shape)
        if trial == 3:
            classes[classes == 2] = 3  # a class with no pixel is skipped without using a label
        got = cluster_clip_per_class(emb, bw, seed, fg, classes, **OFFICIAL, max_instances=3)
        assert (got[~fg] == -1).all()
        next_label = 0
        for k in np.unique(classes[fg]):
            want = np.asarray(cluster_clip(emb, bw, seed, fg & (classes == k), **OFFICIAL, max_instances=3))
            mine = fg & (classes == k)
            np.testing.assert_array_equal(got[mine], np.where(want[mine] >= 0, want[mine] + next_label, -1))
            next_label += int(want.max()) + 1
        assert got.max() == next_label - 1
        for label in np.unique(got[got >= 0]):  # no cluster spans two classes
            assert len(np.unique(classes[got == label])) == 1
    with pytest.raises(ValueError, match="classes"):
        cluster_clip_per_class(emb, bw, seed, fg, classes[:1], **OFFICIAL)


# ----------------------------------------------------------------------------------------------- linking
def blob_frames(boxes_per_frame, shape=(8, 8)):
    """``[T, h, w]`` label maps from per-frame lists of ``(label, y0, y1, x0, x1)`` boxes."""
    out = np.full((len(boxes_per_frame), *shape), -1, np.int32)
    for t, boxes in enumerate(boxes_per_frame):
        for label, y0, y1, x0, x1 in boxes:
            out[t, y0:y1, x0:x1] = label
    return out


def test_iou_matrix_matches_brute_force():
    rng = np.random.default_rng(3)
    a = rng.integers(-1, 4, 500)
    b = rng.integers(-1, 6, 500) + 10
    b[rng.random(500) < 0.2] = -1
    ids_a, ids_b = np.unique(a[a >= 0]), np.unique(b[b >= 0])
    got = _iou_matrix(a, b, ids_a, ids_b)
    for i, la in enumerate(ids_a):
        for j, lb in enumerate(ids_b):
            inter = np.sum((a == la) & (b == lb))
            union = np.sum((a == la) | (b == lb))
            assert got[i, j] == pytest.approx(inter / union)


def test_linking_swapped_labels_and_new_object_mid_video():
    a, b, c = (0, 4, 0, 4), (4, 8, 4, 8), (0, 3, 5, 8)
    chainer = TrackChainer(num_frames=6)
    clip0 = blob_frames([[(0, *a), (1, *b)]] * 4)  # frames 0..3
    chainer.add_clip([0, 1, 2, 3], clip0)
    # Frames 2..5: the clusterer numbered A and B the other way round, and C appears in frame 5.
    clip1 = blob_frames([[(1, *a), (0, *b)]] * 3 + [[(1, *a), (0, *b), (2, *c)]])
    mapping = chainer.add_clip([2, 3, 4, 5], clip1)
    assert mapping == {0: 1, 1: 0, 2: 2}
    linked = chainer.result()
    expected = blob_frames([[(0, *a), (1, *b)]] * 5 + [[(0, *a), (1, *b), (2, *c)]])
    np.testing.assert_array_equal(linked.label_maps, expected)
    assert linked.order == [0, 1, 2]
    assert linked.lifetimes == {0: 5, 1: 5, 2: 0}
    assert linked.first_frame[2] == 5
    assert linked.pixel_counts == {0: 16 * 6, 1: 16 * 6, 2: 9}


def test_linking_earlier_clip_wins_and_zero_iou_matches_are_accepted():
    chainer = TrackChainer(num_frames=4)
    chainer.add_clip([0, 1], blob_frames([[(0, 0, 4, 0, 4)]] * 2))
    # In the shared frame 1 the new clip puts its only cluster somewhere disjoint from track 0 (IoU 0).
    clip1 = blob_frames([[(5, 4, 8, 4, 8)], [(5, 4, 8, 4, 8)], [(5, 4, 8, 4, 8)]])
    assert chainer.add_clip([1, 2, 3], clip1) == {5: 0}
    linked = chainer.result()
    np.testing.assert_array_equal(linked.label_maps[1], blob_frames([[(0, 0, 4, 0, 4)]])[0])  # first come
    np.testing.assert_array_equal(linked.label_maps[3], blob_frames([[(0, 4, 8, 4, 8)]])[0])
    # With a minimum IoU the disjoint cluster starts a new track instead.
    strict = TrackChainer(num_frames=4, min_iou=0.1)
    strict.add_clip([0, 1], blob_frames([[(0, 0, 4, 0, 4)]] * 2))
    assert strict.add_clip([1, 2, 3], clip1) == {5: 1}


def test_linking_rejects_bad_clips():
    chainer = TrackChainer(num_frames=4)
    with pytest.raises(ValueError, match="collapse repeated frames"):
        chainer.add_clip([0, 0, 1], np.full((3, 4, 4), -1))
    chainer.add_clip([0, 1], np.full((2, 4, 4), -1))
    with pytest.raises(ValueError, match="never covered"):
        chainer.result()
    with pytest.raises(ValueError, match="earlier clips had"):
        chainer.add_clip([1, 2], np.full((2, 5, 4), -1))


def test_cluster_then_link_two_clips_end_to_end():
    """Two objects moving right; each clip is clustered independently and linked through frames 2..3."""
    t_total, h, w = 6, 6, 12
    emb = np.zeros((t_total, h, w, 3), np.float32)
    fg = np.zeros((t_total, h, w), bool)
    for t in range(t_total):
        for k, (y0, y1) in enumerate(((0, 2), (4, 6))):
            fg[t, y0:y1, t:t + 3] = True
            emb[t, y0:y1, t:t + 3] = (0.02 * t, 0.8 * k, 0.01 * t)
    bw = np.full((t_total, h, w, 3), 20.0, np.float32)
    chainer = TrackChainer(t_total)
    for frames in clip_schedule(t_total, 4, 2):
        # A different seediness per clip flips which object is found first.
        seed = np.where(np.arange(h)[None, :, None] < 3, 0.9, 0.95) if frames[0] == 0 else \
            np.where(np.arange(h)[None, :, None] < 3, 0.95, 0.9)
        seed = np.broadcast_to(seed, (len(frames), h, w)).astype(np.float32)
        labels = cluster_clip(emb[frames], bw[frames], seed, fg[frames], **OFFICIAL)
        chainer.add_clip(frames, np.asarray(labels))
    linked = chainer.result()
    assert set(linked.order) == {0, 1}
    for t in range(t_total):
        top, bottom = linked.label_maps[t, 0:2][fg[t, 0:2]], linked.label_maps[t, 4:6][fg[t, 4:6]]
        assert (top == top[0]).all() and (bottom == bottom[0]).all() and top[0] != bottom[0]
        assert top[0] == linked.label_maps[0, 0, 0]


# ----------------------------------------------------------------------------------------------- mask chain
def test_mask_chain_known_single_pixel():
    mask = np.zeros((1, 2, 3), bool)
    mask[0, 0, 0] = True
    out = masks_to_original(mask, scale=4, resized_hw=(8, 10), original_hw=(8, 10))
    # Bilinear x4 of one pixel: weights 1, 1, 0.875, 0.625 per axis; only the corner 0.625^2 falls below 0.5.
    expected = np.zeros((8, 10), bool)
    expected[:4, :4] = True
    expected[3, 3] = False
    np.testing.assert_array_equal(out[0], expected)


def test_mask_chain_crops_padding_before_resizing():
    mask = np.zeros((1, 3, 4), bool)
    mask[0, :, 3] = True  # only in the padded columns 12..15 of the x4 map
    out = masks_to_original(mask, scale=4, resized_hw=(12, 12), original_hw=(24, 24))
    assert not out.any()
    mask[0, :, 0] = True
    out = masks_to_original(mask, scale=4, resized_hw=(12, 12), original_hw=(24, 24))
    # Cropped: the x4 columns 0..3 (of 12) become 0..7 of 24 (uncropped, 16 columns onto 24, only 0..5).
    np.testing.assert_array_equal(out[0].any(axis=0), np.arange(24) < 8)


def test_mask_chain_matches_float64_reference():
    rng = np.random.default_rng(5)
    for scale, resized, original in ((4, (37, 50), (75, 101)), (4, (40, 64), (23, 31)), (1, (30, 41), (45, 60))):
        h, w = -(-resized[0] // scale) + 1, -(-resized[1] // scale) + 1  # padded past the resized dims
        masks = rng.random((3, h, w)) < 0.4
        got = masks_to_original(masks, scale=scale, resized_hw=resized, original_hw=original)
        for k in range(3):
            ref = reference_chain(masks[k], scale, resized, original)
            decided = np.abs(ref - 0.5) > 1e-4
            np.testing.assert_array_equal(got[k][decided], (ref > 0.5)[decided])


def test_mask_chain_matches_pytorch_interpolate():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    masks = rng.random((4, 12, 17)) < 0.5
    resized, original = (45, 66), (67, 97)
    got = masks_to_original(masks, scale=4, resized_hw=resized, original_hw=original)
    x = torch.from_numpy(masks.astype(np.float32))[None]
    x = torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    x = x[:, :, : resized[0], : resized[1]]
    want = torch.nn.functional.interpolate(x, original, mode="bilinear", align_corners=False)[0].numpy()
    decided = np.abs(want - 0.5) > 1e-5
    np.testing.assert_array_equal(got[decided], (want > 0.5)[decided])
    assert decided.mean() > 0.95


# ----------------------------------------------------------------------------------------------- benchmarks
def linked_from_maps(label_maps):
    chainer = TrackChainer(len(label_maps))
    chainer.add_clip(list(range(len(label_maps))), np.asarray(label_maps))
    return chainer.result()


IDENTITY = dict(scale=1, resized_hw=(8, 8), original_hw=(8, 8))


def test_davis_ranking_by_lifetime_ties_and_painting_order():
    # Track 0: frames 0..1 (lifetime 1); track 1: frames 0..3 (3); track 2: frames 1..4 (3, ties with 1).
    maps = blob_frames([
        [(0, 0, 4, 0, 4), (1, 4, 8, 4, 8)],
        [(0, 0, 4, 0, 4), (1, 4, 8, 4, 8), (2, 0, 2, 6, 8)],
        [(1, 4, 8, 4, 8), (2, 0, 2, 6, 8)],
        [(1, 4, 8, 4, 8), (2, 0, 2, 6, 8)],
        [(2, 0, 2, 6, 8)],
    ])
    linked = linked_from_maps(maps)
    out, kept = select_tracks_davis(linked, **IDENTITY)
    assert kept == [1, 2, 0]  # lifetime desc; 1 and 2 tie, 1 appeared first
    np.testing.assert_array_equal(out[1], np.where(maps[1] == 1, 1, np.where(maps[1] == 2, 2,
                                                                                np.where(maps[1] == 0, 3, 0))))
    assert out.dtype == np.uint8 and out.shape == (5, 8, 8)
    out2, kept2 = select_tracks_davis(linked, **IDENTITY, max_tracks=2)
    assert kept2 == [1, 2] and out2.max() == 2
    chained, _ = select_tracks_davis(linked, scale=4, resized_hw=(32, 30), original_hw=(16, 15))
    assert chained.shape == (5, 16, 15) and set(np.unique(chained[1]).tolist()) == {0, 1, 2, 3}


def test_davis_later_rank_overwrites(monkeypatch):
    """Where full-resolution masks overlap, the later-ranked (shorter-lived) track is painted last."""
    import stemseg_jax.benchmarks.masks as tracks

    def covering(masks, **_):
        return np.ones((len(masks), 8, 8), bool)

    monkeypatch.setattr(tracks, "masks_to_original", covering)
    maps = blob_frames([[(0, 0, 2, 0, 2), (1, 4, 8, 4, 8)], [(1, 4, 8, 4, 8)], [(1, 4, 8, 4, 8)]])
    out, kept = select_tracks_davis(linked_from_maps(maps), **IDENTITY)
    assert kept == [1, 0]
    assert (out[0] == 2).all() and (out[1:] == 1).all()


def test_ytvis_scores_categories_and_selection():
    maps = blob_frames([
        [(0, 0, 4, 0, 4), (1, 4, 8, 4, 8)],
        [(0, 0, 4, 0, 4), (1, 4, 6, 4, 8)],
        [(0, 0, 4, 0, 4)],
    ])
    linked = linked_from_maps(maps)
    logits = np.zeros((3, 8, 8, 5), np.float32)
    logits[..., 0] = 100.0  # background is dropped before the argmax
    logits[:, :4, :4, 3] = 2.0  # track 0 -> class 3
    logits[:, 4:, 4:, 1] = 1.0  # track 1 -> class 1, except frame 1 where class 4 is stronger per pixel
    logits[1, 4:, 4:, 4] = 1.5
    scores = track_class_scores(linked, logits, "mean_logits", 5)
    entries = select_tracks_ytvis(linked, scores, video_id=7, **IDENTITY)
    assert [e["category_id"] for e in entries] == [3, 1]  # track 1: 16*1 + 8*1 vs 8*1.5 -> class 1
    assert [e["score"] for e in entries] == [1.0, pytest.approx(24 / 48)]
    assert all(e["video_id"] == 7 and len(e["segmentations"]) == 3 for e in entries)
    np.testing.assert_array_equal(decode(entries[1]["segmentations"][1]), maps[1] == 1)
    assert not decode(entries[1]["segmentations"][2]).any()  # empty frames still get an RLE
    assert len(select_tracks_ytvis(linked, scores, video_id=7, **IDENTITY, max_tracks=1)) == 1
    assert select_tracks_ytvis(linked_from_maps(np.full((2, 8, 8), -1)), {}, video_id=1, **IDENTITY) == []


def test_kitti_selection_votes_and_ids():
    maps = blob_frames([
        [(0, 0, 2, 0, 2), (1, 4, 8, 0, 8), (2, 0, 1, 4, 5)],
        [(0, 0, 2, 0, 2), (1, 4, 8, 0, 8)],
        [(0, 0, 2, 0, 2), (2, 0, 1, 4, 5)],
    ])
    linked = linked_from_maps(maps)  # counts: 0 -> 12, 1 -> 64, 2 -> 2; lifetimes: 2, 1, 2
    classes = np.zeros((3, 8, 8), np.int64)
    classes[:, :2, :2] = 2  # track 0: all pedestrian
    classes[0, 4:8, 0:4] = 1  # track 1: 16 car, 16 pedestrian, 32 background in frame 0, 32 bg in frame 1 -> tie
    classes[0, 4:8, 4:8] = 2
    classes[:, 0, 4] = 2  # track 2: pedestrian
    selection = select_tracks_kitti(linked, track_class_scores(linked, classes, "pixel_votes", 3))
    assert selection.track_ids == [1, 0, 2]  # by pixel count [1, 0, 2], then lifetime ascending (stable)
    assert selection.class_ids == [1, 2, 2]
    top2 = select_tracks_kitti(linked, track_class_scores(linked, classes, "pixel_votes", 3), max_tracks=2)
    assert top2.track_ids == [1, 0] and top2.class_ids == [1, 2]  # the dropped track's votes go nowhere
    classes[:, 0, 4] = 0
    votes = track_class_scores(linked, classes, "pixel_votes", 3)
    assert select_tracks_kitti(linked, votes).class_ids == [1, 2, 1]  # no votes at all -> car
    dets = list(kitti_detections(linked, selection, **IDENTITY))
    assert [(f, i, c) for f, i, c, _ in dets] == [(0, 1, 1), (0, 2, 2), (0, 3, 2), (1, 1, 1), (1, 2, 2),
                                                  (2, 2, 2), (2, 3, 2)]
    np.testing.assert_array_equal(decode(dets[0][3]), maps[0] == 1)


def test_overlap_rules():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2] = True
    masks[1, 1:3] = True
    masks[2, 1:3] = True  # fully covers mask 1
    latest = resolve_overlaps(masks, np.array([5, 9, 7]))
    assert latest[1, 1:3].all() and not latest[2].any() and latest[0, 0].all() and not latest[0, 1].any()
    assert (latest.sum(0) == masks.any(0)).all()
    # kitti_detections uses the linked ids (latest) or the lifetime rank; both keep masks disjoint.
    maps = blob_frames([[(0, 0, 4, 0, 4), (1, 4, 8, 4, 8)]] * 2)
    linked = linked_from_maps(maps)
    selection = select_tracks_kitti(linked, track_class_scores(linked, np.ones((2, 8, 8), np.int64), "pixel_votes", 3))
    for rule in ("latest_track", "longest_lifetime"):
        dets = list(kitti_detections(linked, selection, scale=4, resized_hw=(32, 32), original_hw=(20, 20),
                                     overlap=rule))
        frame0 = np.stack([decode(d[3]) for d in dets if d[0] == 0])
        assert frame0.sum(0).max() == 1 and frame0.any(axis=(1, 2)).all()


def test_outputs_feed_the_evaluation_writers(tmp_path):
    maps = blob_frames([[(0, 0, 4, 0, 4), (1, 4, 8, 4, 8)]] * 2)
    linked = linked_from_maps(maps)
    paths = write_davis_outputs(str(tmp_path / "davis"), "seq", ["00000", "00001"], linked, **IDENTITY)
    np.testing.assert_array_equal(np.asarray(Image.open(paths[1])), np.where(maps[1] >= 0, maps[1] + 1, 0))
    entries = select_tracks_ytvis(linked, track_class_scores(linked, np.zeros((2, 8, 8, 3)), "mean_logits", 3),
                                  video_id=1, **IDENTITY)
    json_path, _ = write_ytvis_results(str(tmp_path / "ytvis"), entries)
    with open(json_path) as fh:
        assert [e["score"] for e in json.load(fh)] == [1.0, 1.0]
    cars = track_class_scores(linked, np.ones((2, 8, 8), np.int64), "pixel_votes", 3)
    path = write_kitti_outputs(str(tmp_path / "kitti"), 3, linked, cars, **IDENTITY)
    with open(path) as fh:
        lines = fh.read().splitlines()
    assert len(lines) == 4 and lines[0].startswith("0 1001 1 8 8 ")
    empty = write_kitti_outputs(str(tmp_path / "kitti"), 4, linked_from_maps(np.full((2, 8, 8), -1)), {}, **IDENTITY)
    with open(empty) as fh:
        assert fh.read() == ""


def test_linked_from_label_maps_equals_one_chained_clip_and_class_scores_accumulate():
    maps = blob_frames([[(0, 0, 4, 0, 4), (1, 4, 8, 4, 8)], [(1, 4, 8, 4, 8)], [(2, 0, 2, 6, 8)]])
    ours, chained = linked_from_label_maps(maps), linked_from_maps(maps)
    np.testing.assert_array_equal(ours.label_maps, chained.label_maps)
    assert (ours.pixel_counts, ours.first_frame, ours.last_frame, ours.order) == (
        chained.pixel_counts, chained.first_frame, chained.last_frame, chained.order)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 8, 8, 4)).astype(np.float16)
    scores = track_class_scores(ours, logits, "mean_logits", 4)
    for k in ours.order:  # float64 means of the float16 logits over the track's pixels
        np.testing.assert_allclose(scores[k], logits[maps == k].astype(np.float64).mean(0), rtol=1e-12)
    classes = rng.integers(0, 3, size=(3, 8, 8))
    votes = track_class_scores(ours, classes, "pixel_votes", 3)
    for k in ours.order:
        np.testing.assert_array_equal(votes[k], np.bincount(classes[maps == k], minlength=3))
    with pytest.raises(ValueError, match="class mode"):
        track_class_scores(ours, classes, "majority", 3)
