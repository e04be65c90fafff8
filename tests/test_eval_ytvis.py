"""YouTube-VIS AP: hand cases, the tube IoU against NumPy, and pycocotools' COCOeval on one-frame videos."""

import contextlib
import io
import json
import zipfile

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from stemseg_jax.evaluation import ytvis
from stemseg_jax.evaluation.writers import write_ytvis_results, ytvis_entry
from stemseg_jax.io import encode_rle, encode_rles, to_coco_rle

H, W = 24, 32


def box(y0, x0, y1, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def make_gt(videos, tracks, n_cats=3):
    """videos: {id: length}; tracks: [(video_id, category_id, masks [T, H, W] with empty = absent)]."""
    anns = []
    for k, (vid, cat, masks) in enumerate(tracks, 1):
        segs = [encode_rle(m) if m.any() else None for m in masks]
        anns.append({"id": k, "video_id": vid, "category_id": cat, "iscrowd": 0, "segmentations": segs,
                     "areas": [int(m.sum()) if m.any() else None for m in masks]})
    return {
        "videos": [{"id": v, "height": H, "width": W, "length": n,
                    "file_names": [f"v{v}/{t:05d}.jpg" for t in range(n)]} for v, n in videos.items()],
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_cats + 1)],
    }


def test_perfect_prediction_and_shifted_mask():
    masks = np.stack([box(2, 2, 10, 10), box(2, 3, 10, 11), np.zeros((H, W), bool)])
    gt = make_gt({1: 3}, [(1, 1, masks)])
    r = ytvis.evaluate_ytvis(gt, [ytvis_entry(1, 1, 0.9, masks)])
    # precision = tp / (tp + fp + eps) in pycocotools (and ytvoseval): a perfect AP is 1 - 2e-16, not 1
    assert all(r["stats"][k] == pytest.approx(1.0, abs=1e-12) for k in ("AP", "AP50", "AP75", "APs"))
    assert all(r["stats"][k] == 1.0 for k in ("AR1", "AR10", "AR100"))
    assert r["stats"]["APl"] == -1.0  # no large objects: pycocotools' undefined marker
    # IoU 5/8 in every frame -> thresholds 0.50, 0.55, 0.60 pass: AP = 3/10
    gt = make_gt({1: 2}, [(1, 1, np.stack([box(0, 0, 8, 8)] * 2))])
    shifted = np.stack([box(0, 3, 8, 11)] * 2)  # 40 / 88 < 0.5
    assert ytvis.evaluate_ytvis(gt, [ytvis_entry(1, 1, 1.0, shifted)])["stats"]["AP"] == 0.0
    shifted = np.stack([box(0, 0, 8, 5)] * 2)  # 40 / 64 = 0.625
    r = ytvis.evaluate_ytvis(gt, [ytvis_entry(1, 1, 1.0, shifted)])
    assert r["stats"]["AP"] == pytest.approx(0.3, abs=1e-12)
    assert (r["stats"]["AP50"], r["stats"]["AP75"]) == (pytest.approx(1.0, abs=1e-12), 0.0)
    # a second, lower-scored duplicate is a false positive; the wrong category is not evaluated against it
    r = ytvis.evaluate_ytvis(gt, [ytvis_entry(1, 1, 0.5, shifted), ytvis_entry(1, 1, 0.9, shifted[:, ::-1]),
                                  ytvis_entry(1, 2, 1.0, shifted)])
    assert r["stats"]["AR1"] == 0.0 and r["stats"]["AR10"] == pytest.approx(0.3, abs=1e-12)


def test_crowd_ground_truth_makes_its_matches_ignored():
    person, crowd = np.stack([box(0, 0, 8, 8)] * 2), np.stack([box(10, 10, 20, 30)] * 2)
    gt = make_gt({1: 2}, [(1, 1, person), (1, 1, crowd)])
    gt["annotations"][1]["iscrowd"] = 1
    preds = [ytvis_entry(1, 1, 0.9, person), ytvis_entry(1, 1, 0.95, crowd)]
    r = ytvis.evaluate_ytvis(gt, preds)
    assert r["stats"]["AP"] == pytest.approx(1.0, abs=1e-12)  # the higher-scored crowd match is not an FP
    gt["annotations"][1]["iscrowd"] = 0
    assert ytvis.evaluate_ytvis(gt, preds[:1])["stats"]["AR100"] == 0.5


def test_tube_iou_matches_numpy():
    rng = np.random.default_rng(0)
    t = 6

    def track():
        m = rng.random((t, H, W)) < 0.3
        present = rng.random(t) < 0.7
        m &= present[:, None, None]
        rles = [to_coco_rle(r) if p else None for r, p in zip(encode_rles(m), present)]
        return rles, m

    dts, gts = [track() for _ in range(4)], [track() for _ in range(3)]
    got = ytvis.tube_iou([d for d, _ in dts], [g for g, _ in gts])
    ref = np.array([[np.sum(d & g) / np.sum(d | g) for _, g in gts] for _, d in dts])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-15)


def test_matches_cocoeval_on_single_frame_videos():
    """With one frame per video the tube IoU is the mask IoU, so plain COCOeval (with the 128/256 area
    ranges) must give identical stats and precision arrays."""
    rng = np.random.default_rng(3)
    n_vid, hh, ww = 12, 300, 300
    videos, tracks, preds = {}, [], []
    yy, xx = np.ogrid[:hh, :ww]
    for v in range(1, n_vid + 1):
        videos[v] = 1
        for _ in range(int(rng.integers(1, 4))):
            cy, cx, r = rng.integers(0, hh), rng.integers(0, ww), rng.choice([20, 90, 170])
            g = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            cat = int(rng.integers(1, 4))
            tracks.append((v, cat, g[None]))
            for _ in range(int(rng.integers(0, 3))):
                p = np.roll(g, (int(rng.integers(-r // 3, r // 3)), int(rng.integers(-r // 3, r // 3))), axis=(0, 1))
                preds.append((v, cat if rng.random() < 0.8 else int(rng.integers(1, 4)), float(rng.random()), p))
    global H, W
    old = (H, W)
    H, W = hh, ww
    try:
        gt = make_gt(videos, tracks)
    finally:
        H, W = old
    results = [ytvis_entry(v, c, s, p[None]) for v, c, s, p in preds]
    ours = ytvis.evaluate_ytvis(gt, results)

    coco_gt = COCO()
    coco_gt.dataset = {
        "images": [{"id": v, "height": hh, "width": ww} for v in videos],
        "annotations": [{"id": a["id"], "image_id": a["video_id"], "category_id": a["category_id"], "iscrowd": 0,
                         "segmentation": a["segmentations"][0], "area": a["areas"][0]} for a in gt["annotations"]],
        "categories": gt["categories"],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([{"image_id": r["video_id"], "category_id": r["category_id"], "score": r["score"],
                                    "segmentation": r["segmentations"][0]} for r in results])
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.areaRng = ytvis.AREA_RANGES
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    np.testing.assert_array_equal(np.array([ours["stats"][k] for k in ytvis.STAT_NAMES]), ev.stats)
    assert 0.05 < ours["stats"]["AP"] < 0.95 and ours["stats"]["APs"] > -1 and ours["stats"]["APl"] > -1


def test_bad_input_is_named():
    gt = make_gt({1: 2, 2: 3}, [(1, 1, np.stack([box(0, 0, 8, 8)] * 2))])
    good = ytvis_entry(1, 1, 1.0, np.stack([box(0, 0, 8, 8)] * 2))
    with pytest.raises(ValueError, match="unknown video 7"):
        ytvis.evaluate_ytvis(gt, [dict(good, video_id=7)])
    with pytest.raises(ValueError, match=r"result 0 \(video 1\) has 3 frames, the video has 2"):
        ytvis.evaluate_ytvis(gt, [dict(good, segmentations=good["segmentations"] + [None])])
    small = encode_rle(np.zeros((H, W + 1), bool))
    with pytest.raises(ValueError, match=r"video 1\), frame 1: mask size"):
        ytvis.evaluate_ytvis(gt, [dict(good, segmentations=[good["segmentations"][0], small])])
    with pytest.raises(ValueError, match="unknown category 9"):
        ytvis.evaluate_ytvis(gt, [dict(good, category_id=9)])


def test_writer_round_trip(tmp_path):
    masks = np.stack([box(1, 1, 5, 5), np.zeros((H, W), bool)])
    entry = ytvis_entry(3, 2, 0.25, masks)
    assert isinstance(entry["segmentations"][0]["counts"], str)
    json_path, zip_path = write_ytvis_results(str(tmp_path), [entry, dict(entry, segmentations=[None, None])])
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == ["results.json"]
        assert json.loads(zf.read("results.json")) == json.load(open(json_path))
    loaded = json.load(open(json_path))
    assert loaded[1]["segmentations"] == [None, None] and loaded[0]["score"] == 0.25
    gt = make_gt({3: 2}, [(3, 2, masks)])
    assert ytvis.evaluate_ytvis(gt, json_path)["stats"]["AR1"] == 1.0
