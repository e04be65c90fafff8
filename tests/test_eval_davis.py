"""DAVIS unsupervised J&F: hand cases, an independent full-frame reference, the toolkit's quirks, files."""

import itertools
import os

import numpy as np
import pytest
from scipy import ndimage

from stemseg_jax.evaluation import davis
from stemseg_jax.evaluation.writers import write_davis_sequence
from stemseg_jax.io import write_indexed_png


def ref_boundary(mask):
    """seg2bmap written independently: compare with the right / lower / lower-right neighbours of a
    zero-padded copy, then apply the toolkit's last-row / last-column / corner rules."""
    m = np.asarray(mask, bool)
    p = np.pad(m, ((0, 1), (0, 1)))
    b = (m != p[:-1, 1:]) | (m != p[1:, :-1]) | (m != p[1:, 1:])
    b[-1, :] = m[-1, :] != p[-2, 1:]
    b[:, -1] = m[:, -1] != p[1:, -2]
    b[-1, -1] = False
    return b


def ref_scores(pred, gt, void):
    """Float64 J and F of one pair on full frames (scipy dilation with the Euclidean disk)."""
    keep = ~void
    inter = np.sum(pred & gt & keep)
    union = np.sum((pred | gt) & keep)
    j = 1.0 if union == 0 else inter / union
    r = int(np.ceil(0.008 * np.hypot(*pred.shape)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    se = yy**2 + xx**2 <= r * r
    fb, gb = ref_boundary(pred & keep), ref_boundary(gt & keep)
    fd, gd = ndimage.binary_dilation(fb, se), ndimage.binary_dilation(gb, se)
    nf, ng = fb.sum(), gb.sum()
    if nf == 0 or ng == 0:
        prec, rec = {(0, 0): (1, 1), (0, 1): (1, 0), (1, 0): (0, 1)}[(int(nf > 0), int(ng > 0))]
    else:
        prec, rec = (fb & gd).sum() / nf, (gb & fd).sum() / ng
    return j, (0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))


def blobs(rng, h, w, k, p_absent=0.2):
    m = np.zeros((h, w), np.uint8)
    yy, xx = np.ogrid[:h, :w]
    for i in range(1, k + 1):
        if rng.random() < p_absent:
            continue
        y, x, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, max(3, h // 3))
        m[(yy - y) ** 2 + ((xx - x) * rng.uniform(0.5, 1.5)) ** 2 < r * r] = i
    return m


def test_windowed_frame_scores_match_full_frame_reference():
    rng = np.random.default_rng(0)
    for trial in range(12):
        h, w = int(rng.integers(15, 140)), int(rng.integers(15, 160))  # radii 1..2
        gt = blobs(rng, h, w, 3)
        res = blobs(rng, h, w, 4)
        if trial % 3 == 0:
            gt[rng.random((h, w)) < 0.03] = 255
        if trial % 4 == 0:  # masks touching the image border exercise the last-row / column rules
            res[-3:, :] = 1
            gt[:, -2:] = 2
        j, f = davis.frame_scores(res, gt, 5, 3)
        void = gt == 255
        for p, g in itertools.product(range(5), range(3)):
            rj, rf = ref_scores(res == p + 1, gt == g + 1, void)
            assert j[p, g] == pytest.approx(rj, abs=1e-12) and f[p, g] == pytest.approx(rf, abs=1e-12)


def test_boundary_and_disk_rules():
    assert [davis.boundary_radius(480, w) for w in (854, 910, 1152)] == [8, 9, 10]
    assert davis.boundary_radius(720, 1280) == 12
    d = davis.disk(2)
    assert d.sum() == 13 and d[0, 2] == 1 and d[0, 1] == 0
    m = np.zeros((5, 6), bool)
    m[1:3, 1:4] = True
    assert (davis.seg2bmap(m) == ref_boundary(m)).all()
    assert not davis.seg2bmap(np.ones((4, 4), bool)).any()  # no boundary inside, even at the image border


def box_maps(t, h, w, boxes):
    m = np.zeros((t, h, w), np.uint8)
    for k, (y0, x0, y1, x1) in enumerate(boxes, 1):
        m[:, y0:y1, x0:x1] = k
    return m


def test_perfect_and_permuted_proposals_give_one():
    gt = box_maps(6, 40, 50, [(2, 2, 12, 12), (20, 20, 35, 45)])
    res = np.where(gt == 1, 2, np.where(gt == 2, 1, 0)).astype(np.uint8)
    res[:, 0:2, 40:50] = 3  # a surplus proposal costs nothing
    out = davis.evaluate_sequence(gt, res)
    assert out["pairs"] == [(1, 2), (2, 1)]  # rows in proposal order, as the toolkit reports them
    assert (out["J"] == 1).all() and (out["F"] == 1).all()
    assert davis.db_statistics(out["J"][0]) == (1.0, 1.0, 0.0)


def test_shifted_mask_known_iou_and_void():
    gt = box_maps(1, 40, 50, [(10, 10, 20, 20)])
    res = box_maps(1, 40, 50, [(10, 12, 20, 22)])
    out = davis.evaluate_sequence(gt, res)
    assert out["J"][0, 0] == pytest.approx(80 / 120, abs=1e-15)
    gt[0, 10:20, 20:22] = 255  # the 20 predicted pixels outside the object become void
    out = davis.evaluate_sequence(gt, res)
    assert out["J"][0, 0] == pytest.approx(80 / 100, abs=1e-15)
    # absent object and empty proposal in a frame: J = 1 there; a proposal firing on an absent object: J = 0
    gt2 = box_maps(2, 40, 50, [(10, 10, 20, 20)])
    gt2[1] = 0
    res2 = gt2.copy()
    assert davis.evaluate_sequence(gt2, res2)["J"].tolist() == [[1.0, 1.0]]
    res2[1] = gt2[0]
    assert davis.evaluate_sequence(gt2, res2)["J"].tolist() == [[1.0, 0.0]]


def test_matching_maximises_mean_j_and_f_like_brute_force():
    rng = np.random.default_rng(1)
    gt = np.stack([blobs(rng, 30, 40, 3, 0.0) for _ in range(3)])
    res = np.stack([blobs(rng, 30, 40, 4, 0.1) for _ in range(3)])
    out = davis.evaluate_sequence(gt, res)
    scores = np.zeros((4, 3))
    for p, g in itertools.product(range(4), range(3)):
        per = [ref_scores(res[t] == p + 1, gt[t] == g + 1, np.zeros((30, 40), bool)) for t in range(3)]
        scores[p, g] = (np.mean([a for a, _ in per]) + np.mean([b for _, b in per])) / 2
    best = max(sum(scores[p, g] for g, p in enumerate(perm)) for perm in itertools.permutations(range(4), 3))
    got = sum((out["J"][k].mean() + out["F"][k].mean()) / 2 for k in range(3))
    assert got == pytest.approx(best, abs=1e-12)


def test_decay_bins_round_half_up_and_uint8_quirk():
    v = np.linspace(1.0, 0.0, 75) ** 2
    edges = [0, 19, 37, 56, 74]
    expect = v[edges[0] : edges[1] + 1].mean() - v[edges[3] : edges[4] + 1].mean()
    assert davis.db_statistics(v)[2] == pytest.approx(expect, abs=1e-15)
    long = np.linspace(1.0, 0.0, 257)
    assert np.isnan(davis.db_statistics(long, "official")[2])
    fixed = davis.db_statistics(long, "fixed")[2]
    assert fixed == pytest.approx(long[0:65].mean() - long[192:257].mean(), abs=1e-15)
    assert davis.db_statistics(np.array([0.4, 0.6, 0.7, 0.2]))[1] == 0.5


def write_gt(root, seqs):
    with_sets = os.path.join(root, "ImageSets", "2017")
    os.makedirs(with_sets, exist_ok=True)
    with open(os.path.join(with_sets, "val.txt"), "w") as fh:
        fh.write("\n".join(seqs) + "\n")
    for seq, maps in seqs.items():
        for t, m in enumerate(maps):
            write_indexed_png(os.path.join(root, "Annotations_unsupervised", "480p", seq, f"{t:05d}.png"), m)


def test_evaluate_davis_files_global_is_object_weighted(tmp_path):
    a = box_maps(4, 30, 40, [(2, 2, 12, 12), (15, 15, 25, 35)])
    b = box_maps(5, 30, 40, [(5, 5, 15, 15)])
    write_gt(str(tmp_path / "gt"), {"seqa": a, "seqb": b})
    write_davis_sequence(str(tmp_path / "res"), "seqa", [f"{t:05d}" for t in range(4)], a)
    shifted = box_maps(5, 30, 40, [(5, 7, 15, 17)])
    write_davis_sequence(str(tmp_path / "res"), "seqb", [f"{t:05d}.png" for t in range(5)], shifted)
    r = davis.evaluate_davis(str(tmp_path / "gt"), str(tmp_path / "res"))
    assert [row["label"] for row in r["per_object"]] == ["seqa_1", "seqa_2", "seqb_1"]
    assert r["global"]["J-Mean"] == pytest.approx((1 + 1 + 80 / 120) / 3, abs=1e-12)
    jf = (r["global"]["J-Mean"] + r["global"]["F-Mean"]) / 2
    assert r["global"]["J&F-Mean"] == pytest.approx(jf, abs=1e-15)
    assert "seqb_1" in davis.format_table(r)
    assert r["per_sequence"]["seqa"]["J-Mean"] == 1.0 and r["per_sequence"]["seqa"]["objects"] == 2
    assert r["per_sequence"]["seqb"]["J-Mean"] == pytest.approx(80 / 120, abs=1e-12)


def test_bad_input_names_file_and_frame(tmp_path):
    gt = box_maps(2, 30, 40, [(2, 2, 12, 12)])
    write_gt(str(tmp_path / "gt"), {"s": gt})
    with pytest.raises(FileNotFoundError, match="sequence s"):
        davis.evaluate_davis(str(tmp_path / "gt"), str(tmp_path / "res"))
    write_davis_sequence(str(tmp_path / "res"), "s", ["00000"], gt[:1])
    with pytest.raises(FileNotFoundError, match=r"00001.png.*frame 00001"):
        davis.evaluate_davis(str(tmp_path / "gt"), str(tmp_path / "res"))
    write_indexed_png(str(tmp_path / "res" / "s" / "00001.png"), np.zeros((30, 41), np.uint8))
    with pytest.raises(ValueError, match=r"00001.png: mask size"):
        davis.evaluate_davis(str(tmp_path / "gt"), str(tmp_path / "res"))
    many = np.zeros((2, 30, 40), np.uint8)
    many[:, 0, :21] = np.arange(1, 22)
    with pytest.raises(ValueError, match="21 proposals"):
        davis.evaluate_sequence(gt, many)
    with pytest.raises(ValueError, match="proposal ids"):
        write_davis_sequence(str(tmp_path / "res"), "s", ["00000", "00001"], many)


def test_matches_trackeval_j_and_f_on_random_sequences():
    """TrackEval's JAndF (a port of the DAVIS toolkit, matching on J&F when asked) on void-free data."""
    pytest.importorskip("skimage")  # TrackEval's F needs skimage's disk
    metrics = pytest.importorskip("trackeval.metrics")
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(5)
    t_len, h, w = 9, 60, 90
    gt = np.stack([blobs(rng, h, w, 3, 0.0 if t == 0 else 0.2) for t in range(t_len)])
    for k in range(1, 4):  # every GT object present in frame 0 (the toolkit counts objects there)
        if not (gt[0] == k).any():
            gt[0, 5 * k : 5 * k + 4, :6] = k
    res = np.stack([blobs(rng, h, w, 4, 0.2) for _ in range(t_len)])
    for k in range(1, 5):
        if not (res == k).any():
            res[0, :3, 10 * k : 10 * k + 4] = k

    def dets(maps, n):
        ids = [np.array([k for k in range(n) if (m == k + 1).any()], int) for m in maps]
        rles = [[mask_utils.encode(np.asfortranarray((m == k + 1).astype(np.uint8))) for k in i]
                for m, i in zip(maps, ids)]
        return ids, rles

    gt_ids, gt_dets = dets(gt, 3)
    tr_ids, tr_dets = dets(res, 4)
    metric = metrics.JAndF()
    metric.optim_type = "J&F"
    ref = metric.eval_sequence({"num_timesteps": t_len, "num_gt_ids": 3, "num_tracker_ids": 4, "gt_ids": gt_ids,
                                "tracker_ids": tr_ids, "gt_dets": gt_dets, "tracker_dets": tr_dets})
    out = davis.evaluate_sequence(gt, res)
    ours = [(davis.db_statistics(j), davis.db_statistics(f)) for j, f in zip(out["J"], out["F"])]
    # TrackEval returns the per-sequence mean over GT objects
    for k, name in ((0, "Mean"), (2, "Decay")):
        assert np.mean([j[k] for j, _ in ours]) == pytest.approx(ref[f"J-{name}"], abs=1e-12)
        assert np.mean([f[k] for _, f in ours]) == pytest.approx(ref[f"F-{name}"], abs=1e-12)
    assert 0.05 < ref["J-Mean"] < 0.9 and ref["F-Mean"] > 0.05
