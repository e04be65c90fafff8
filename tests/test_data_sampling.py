"""Clip sampling (spec §5.3), mixtures (§5.2) and size buckets of the input pipeline."""

import dataclasses

import numpy as np
import pytest

from stemseg_jax.data import pipeline, sampling


@dataclasses.dataclass
class _Rec:
    name: str
    frame_instances: tuple


def _rec(pattern: str, name: str = "s") -> _Rec:
    """'x' = a frame with an instance, '.' = an empty frame."""
    return _Rec(name, tuple(frozenset({1}) if c == "x" else frozenset() for c in pattern))


@pytest.mark.parametrize(
    "num_frames,gap,expected_offsets",
    [
        (8, 8, [0, 1, 2, 3, 5, 6, 7, 8]),  # YouTube-VIS / KITTI: 8 of 9 consecutive frames
        (8, 16, [0, 2, 5, 7, 9, 11, 14, 16]),  # DAVIS: spacing 16/7
        (16, 16, [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16]),  # DAVIS stage 2: 16 of 17
    ],
)
def test_clip_frame_indices_spec_examples(num_frames, gap, expected_offsets):
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        idx = sampling.clip_frame_indices(40, num_frames, gap, rng)
        assert idx.tolist() == [idx[0] + o for o in expected_offsets]
        starts.add(int(idx[0]))
    # start is uniform over [0, len - span - 1]: every start appears, none beyond
    assert starts == set(range(40 - gap))


def test_clip_frame_indices_short_sequence_and_collision():
    rng = np.random.default_rng(1)
    idx = sampling.clip_frame_indices(6, 6, 8, rng)  # span = len - 1 = 5: the whole sequence
    assert idx.tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="repeat"):
        sampling.clip_frame_indices(5, 8, 8, rng)


def test_allocate_clip_quotas():
    assert sampling.allocate_clip_quotas([10, 30, 60], 10).tolist() == [1, 3, 6]
    assert sampling.allocate_clip_quotas([10, 30, 60], 7).tolist() == [1, 3, 5]  # ceil(0.7), ceil(2.1), ceil(4.2)
    assert sampling.allocate_clip_quotas([1, 1000], 3).tolist() == [1, 3]  # at least one clip each


def test_nonempty_frame_view_maps_back_to_record_frames():
    view = sampling.nonempty_frame_view(_rec("x..xx.x"), 4)
    assert view.frames.tolist() == [0, 3, 4, 6] and view.record_index == 4


def test_kitti_split_on_six_empty_frames():
    # runs: 5 empty (skipped, no split), 6 empty (split), 8 empty (one split), leading 6 (nothing collected yet)
    pattern = "......" + "xx" + "....." + "x" + "......" + "xxx" + "........" + "x"
    views = sampling.kitti_split_views(_rec(pattern, "0001"), 0)
    assert [v.name for v in views] == ["0001_1", "0001_2", "0001_3"]
    assert views[0].frames.tolist() == [6, 7, 13]
    assert views[1].frames.tolist() == [20, 21, 22]
    assert views[2].frames.tolist() == [31]


def test_sample_video_clips_quota_proportions_and_filtering():
    views = [
        sampling.SequenceView(0, np.arange(0, 200, 2), "long"),  # 100 frames, every 2nd of the record
        sampling.SequenceView(1, np.arange(50), "mid"),
        sampling.SequenceView(2, np.arange(9), "short"),  # len <= gap + 1: skipped
    ]
    rng = np.random.default_rng(0)
    rec, frames = sampling.sample_video_clips(views, 300, 8, 8, rng)
    assert rec.shape == (300,) and frames.shape == (300, 8)
    assert 2 not in rec
    counts = np.bincount(rec, minlength=2)
    # 200 and 100 clips before the surplus (at most one per video) is dropped
    assert 199 <= counts[0] <= 200 and 99 <= counts[1] <= 100
    long_frames = frames[rec == 0]
    assert (long_frames % 2 == 0).all()  # indices are the view's record frames
    assert (np.diff(long_frames, axis=1) > 0).all()
    rec2, frames2 = sampling.sample_video_clips(views, 300, 8, 8, np.random.default_rng(0))
    np.testing.assert_array_equal(rec, rec2)
    np.testing.assert_array_equal(frames, frames2)
    with pytest.raises(ValueError, match="frame_gap"):
        sampling.sample_video_clips(views[2:], 5, 8, 8, rng)


def test_mixture_quotas():
    quotas = sampling.mixture_quotas({"coco": 0.3, "voc": 0.1, "ytvis": 0.6}, 200)
    assert quotas == {"coco": 60, "voc": 20, "ytvis": 120}
    with pytest.raises(ValueError, match="weights"):
        sampling.mixture_quotas({"a": 0.0}, 10)


def test_resample_to_quota():
    rng = np.random.default_rng(0)
    sub = sampling.resample_to_quota(100, 10, rng)
    assert len(np.unique(sub)) == 10 and sub.max() < 100 and (np.diff(sub) > 0).all()
    assert not np.array_equal(sub, np.arange(10))
    np.testing.assert_array_equal(sub, sampling.resample_to_quota(100, 10, np.random.default_rng(0)))
    assert sampling.resample_to_quota(100, 10, rng, "first").tolist() == list(range(10))
    # smaller than the quota: repeat floor(8/3) = 2 times, remainder 2 at round(linspace(0, 2, 2))
    assert sampling.resample_to_quota(3, 8, rng).tolist() == [0, 1, 2, 0, 1, 2, 0, 2]
    with pytest.raises(ValueError, match="subsample"):
        sampling.resample_to_quota(3, 8, rng, "last")


def test_buckets_cover_every_shape_and_pick_the_smallest():
    rng = np.random.default_rng(0)
    landscape = np.stack([np.full(50, 640), rng.choice([864, 896, 1024, 1152], 50)], axis=1)
    portrait = np.stack([rng.choice([864, 960], 20), np.full(20, 640)], axis=1)
    shapes = np.concatenate([landscape, portrait])
    buckets = pipeline.choose_buckets(shapes, np.ones(len(shapes)))
    assert len(buckets) <= 4
    assigned = pipeline.assign_buckets(shapes, buckets)
    chosen = buckets[assigned]
    assert (chosen >= shapes).all()
    areas = buckets[:, 0] * buckets[:, 1]
    for s, b in zip(shapes, assigned):
        fits = (buckets >= s).all(axis=1)
        assert areas[b] == areas[fits].min()
    # bucketing beats one dataset-wide maximum, and no split of either orientation into two runs of the
    # area-sorted distinct shapes pads less (brute force)
    cost = (chosen[:, 0] * chosen[:, 1]).sum()
    assert cost < len(shapes) * shapes[:, 0].max() * shapes[:, 1].max()
    brute = 0
    for group in (landscape, portrait):
        distinct, counts = np.unique(group, axis=0, return_counts=True)
        order = np.argsort(distinct[:, 0] * distinct[:, 1], kind="stable")
        distinct, counts = distinct[order], counts[order]
        options = []
        for cut in range(1, len(distinct) + 1):
            c = 0
            for part, n in ((distinct[:cut], counts[:cut]), (distinct[cut:], counts[cut:])):
                if len(part):
                    top = part.max(axis=0)
                    c += n.sum() * top[0] * top[1]
            options.append(c)
        brute += min(options)
    assert cost <= brute
