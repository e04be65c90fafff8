"""Synthetic datasets: real on-disk formats, determinism, and the properties that make them learnable."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import time

import numpy as np
import pytest

from stemseg_jax import io
from stemseg_jax.data import load_dataset, synthetic
from stemseg_jax.data.readers import common

# pycocotools 2.0.11 warns on every decode under numpy 2 (its own __array__ call); nothing to fix here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SMALL = dict(num_train=2, num_val=1, num_frames=6)


def _tree_digest(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = hashlib.sha1(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def davis_default(tmp_path_factory):
    """The default demo-size DAVIS set (also times generation)."""
    root = str(tmp_path_factory.mktemp("davis_default"))
    start = time.perf_counter()
    summary = synthetic.generate("davis", root, seed=0)
    return summary, time.perf_counter() - start


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    return {fmt: synthetic.generate(fmt, str(tmp_path_factory.mktemp(fmt)), seed=5, **SMALL)
            for fmt in synthetic.FORMATS}  # fmt: skip


def test_default_generation_is_fast_and_readable(davis_default):
    summary, seconds = davis_default
    assert seconds < 30, f"default dataset took {seconds:.1f}s"
    train = load_dataset(synthetic.dataset_config("davis", summary["root"], "train"))
    val = load_dataset(synthetic.dataset_config("davis", summary["root"], "val"))
    assert len(train) == 8 and len(val) == 3
    assert all(r.num_frames == 24 and (r.height, r.width) == (120, 214) for r in train + val)


def test_default_difficulty_is_learnable(davis_default):
    """2-4 objects per video, objects >= 15% of the short side, moving, occluding, not overlapping."""
    summary, _ = davis_default
    recs = load_dataset(synthetic.dataset_config("davis", summary["root"], "train"))
    heights, moves, occlusions = [], [], 0
    for r in recs:
        assert 2 <= len(r.categories) <= 4, r.name
        masks, ignore = r.masks.load(list(range(r.num_frames)), list(r.instance_ids))
        assert masks.sum(0).max() <= 1  # visible masks never overlap
        assert not ignore.any()
        for m in masks:
            present = np.flatnonzero(m.any(axis=(1, 2)))
            ys = [np.flatnonzero(m[t].any(1)) for t in present]
            heights.append(np.median([y[-1] - y[0] + 1 for y in ys]) / min(r.height, r.width))
            c0 = np.argwhere(m[present[0]]).mean(0)
            c1 = np.argwhere(m[present[-1]]).mean(0)
            moves.append(np.linalg.norm(c1 - c0))
            areas = m.sum((1, 2))[present]
            occlusions += int(areas.min() < 0.7 * np.median(areas))
    assert np.median(heights) >= 0.2 and np.percentile(heights, 10) >= 0.12
    assert np.median(moves) > 5  # pixels over the video
    assert occlusions >= 2


def test_categories_have_distinct_appearance(small_sets):
    """Mean colour inside each category's masks differs clearly between categories and from the background."""
    recs = load_dataset(synthetic.dataset_config("ytvis", small_sets["ytvis"]["root"], "train"))
    colour = {}
    bg = []
    for r in recs:
        masks, _ = r.masks.load(list(range(r.num_frames)), list(r.instance_ids))
        frames = np.stack([io.read_image(p) for p in r.frame_paths]).astype(float)
        for iid, m in zip(r.instance_ids, masks):
            if m.any():
                colour.setdefault(r.categories[iid], []).append(frames[m].mean(0))
        bg.append(frames[~masks.any(0)].mean(0))
    means = {c: np.mean(v, 0) for c, v in colour.items()}
    assert set(means) <= set(synthetic.CATEGORY_STYLES["ytvis"])
    cats_ = sorted(means)
    for i, a in enumerate(cats_):
        assert np.linalg.norm(means[a] - np.mean(bg, 0)) > 40
        for b in cats_[i + 1 :]:
            assert np.linalg.norm(means[a] - means[b]) > 40, (a, b)


def test_scene_has_entering_and_leaving_objects():
    knobs = synthetic.Knobs(enter_prob=0.5, leave_prob=0.5)
    entered = left = 0
    for k in range(6):
        scene = synthetic._Scene(np.random.default_rng(k), synthetic.CATEGORY_STYLES["ytvis"], 64, 112, 20, knobs)
        _, masks = scene.render_all()
        present = masks.any(axis=(2, 3))
        entered += int(np.sum(~present[:, 0] & present.any(1)))
        left += int(np.sum(present[:, 0] & ~present[:, -1]))
    assert entered >= 1 and left >= 1


def test_deterministic_for_a_seed(tmp_path):
    a = synthetic.generate("kitti_mots", str(tmp_path / "a"), seed=3, **SMALL)
    b = synthetic.generate("kitti_mots", str(tmp_path / "b"), seed=3, **SMALL)
    c = synthetic.generate("kitti_mots", str(tmp_path / "c"), seed=4, **SMALL)
    da, db, dc = _tree_digest(a["root"]), _tree_digest(b["root"]), _tree_digest(c["root"])
    da.pop("synthetic_info.json"), db.pop("synthetic_info.json"), dc.pop("synthetic_info.json")
    assert da == db
    assert sorted(da) == sorted(dc) and da != dc
    # A val video depends only on (seed, split, index): more train videos leave it unchanged.
    d = synthetic.generate("kitti_mots", str(tmp_path / "d"), seed=3, num_train=3, num_val=1, num_frames=6)
    dd = _tree_digest(d["root"])
    val_files = [k for k in da if "0002" in k]
    assert val_files and all(da[k] == dd[k] for k in val_files)
    # ... and so do longer train videos (num_val_frames keeps the val split's length).
    e = synthetic.generate("kitti_mots", str(tmp_path / "e"), seed=3, num_train=2, num_val=1, num_frames=9,
                           num_val_frames=6)  # fmt: skip
    de = _tree_digest(e["root"])
    val_only = [k for k in val_files if "/0002/" in k or k.endswith("0002.txt")]
    assert val_only and all(da[k] == de[k] for k in val_only)
    train_frames = [k for k in de if k.startswith(os.path.join("training", "image_02", "0000"))]
    assert len(train_frames) == 9, sorted(de)[:12]
    with pytest.raises(ValueError, match="val videos need at least one frame, got 0"):
        synthetic.generate("kitti_mots", str(tmp_path / "f"), seed=3, num_train=0, num_val=1, num_val_frames=0)


def test_kitti_mots_txt_and_png_agree(small_sets):
    root = small_sets["kitti_mots"]["root"]
    for split in ("train", "val"):
        txt = load_dataset(dict(format="kitti_mots", root=root, split=split))
        png = load_dataset(dict(format="kitti_mots", root=root, split=split, annotations="instances"))
        assert [r.name for r in txt] == [r.name for r in png] == list(small_sets["kitti_mots"]["splits"][split])
        for a, b in zip(txt, png):
            assert a.categories == b.categories and a.frame_instances == b.frame_instances
            assert set(a.categories.values()) <= {1, 2}
            frames = list(range(a.num_frames))
            ma, ia = a.masks.load(frames, list(a.instance_ids))
            mb, ib = b.masks.load(frames, list(a.instance_ids))
            np.testing.assert_array_equal(ma, mb)
            np.testing.assert_array_equal(ia, ib)
            assert not (ma.any(0) & ia).any()  # MOTS ground truth never overlaps its ignore region


def test_ytvis_valid_gt_and_coco(small_sets):
    root = small_sets["ytvis"]["root"]
    valid = load_dataset(synthetic.dataset_config("ytvis", root, "val"))
    assert all(r.categories == {} for r in valid)  # valid.json is released without annotations
    gt = load_dataset(dict(format="ytvis", root=root, split="valid", annotations="valid_gt.json"))
    assert [r.name for r in gt] == [r.name for r in valid] and all(r.categories for r in gt)
    data = json.load(open(small_sets["ytvis"]["val_gt"]))
    for a in data["annotations"]:  # ground-truth conventions: uncompressed RLE, areas match masks
        seg = next(s for s in a["segmentations"] if s is not None)
        assert isinstance(seg["counts"], list)
        t = a["segmentations"].index(seg)
        assert a["areas"][t] == io.decode_segmentation(seg, seg["size"][0], seg["size"][1], "gt").sum()
    coco_root = small_sets["coco"]["root"]
    train = load_dataset(synthetic.dataset_config("coco", coco_root, "train"))
    assert all(r.is_image for r in train)
    mapped = load_dataset(dict(synthetic.dataset_config("coco", coco_root, "train"), category_map="coco_to_ytvis"))
    assert {c for r in mapped for c in r.categories.values()} <= set(synthetic.CATEGORY_STYLES["ytvis"])


def test_every_format_reads_back(small_sets):
    for fmt, summary in small_sets.items():
        for which in ("train", "val"):
            recs = load_dataset(synthetic.dataset_config(fmt, summary["root"], which))
            assert len(recs) >= 1
            r = recs[0]
            masks, ignore = r.masks.load([0], list(r.instance_ids))
            assert masks.shape[2:] == ignore.shape[1:] == (r.height, r.width)
            assert io.read_image(r.frame_paths[0]).shape == (r.height, r.width, 3)
            # Records travel to the pipeline's worker processes by pickle.
            clone = pickle.loads(pickle.dumps(r))
            masks2, ignore2 = clone.masks.load([0], list(r.instance_ids))
            np.testing.assert_array_equal(masks, masks2)
            np.testing.assert_array_equal(ignore, ignore2)


def test_bad_knobs_and_cli(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic knob"):
        synthetic.generate("davis", str(tmp_path / "x"), object_sise=(0.2, 0.3))
    with pytest.raises(ValueError, match="unknown synthetic format"):
        synthetic.generate("vot", str(tmp_path / "x"))
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
    try:
        import make_synthetic_dataset
    finally:
        sys.path.pop(0)
    out = str(tmp_path / "cli")
    args = ["--format", "coco", "--out", out, "--seed", "2", "--num_train", "3", "--num_val", "1",
            "--object_size", "0.3,0.4", "--max_objects", "3"]  # fmt: skip
    assert make_synthetic_dataset.main(args) == 0
    info = json.load(open(os.path.join(out, "synthetic_info.json")))
    assert info["knobs"]["object_size"] == [0.3, 0.4] and info["knobs"]["max_objects"] == 3
    assert len(common.load_json(os.path.join(out, "annotations/instances_train2017.json"), "x")["images"]) == 3


def test_tfds_source_roundtrip_without_tensorflow(small_sets, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from stemseg_jax.data import tfds_source

    cfg = synthetic.dataset_config("kitti_mots", small_sets["kitti_mots"]["root"], "train")
    split = tfds_source.prepare(cfg, str(tmp_path / "tfds"))
    source = tfds_source.TfdsVideoSource(str(tmp_path / "tfds"), split)
    recs = load_dataset(cfg)
    assert len(source) == len(recs)
    by_name = {r.name: r for r in recs}
    for i in range(len(source)):
        item = source[i]
        r = by_name[item["name"]]
        frames = list(range(r.num_frames))
        masks, ignore = r.masks.load(frames, list(r.instance_ids))
        np.testing.assert_array_equal(item["frames"], np.stack([io.read_image(p) for p in r.frame_paths]))  # PNG
        np.testing.assert_array_equal(item["masks"], masks)
        np.testing.assert_array_equal(item["ignore"], ignore)
        assert list(item["instance_ids"]) == list(r.instance_ids)
        assert list(item["categories"]) == [r.categories[i] for i in r.instance_ids]
    assert "tensorflow" not in sys.modules


def test_synthetic_ground_truth_scores_perfectly_with_the_evaluators(small_sets, tmp_path):
    """The val ground truth is in each benchmark's real format: submitting it as the result scores 1."""
    import shutil

    from stemseg_jax.evaluation import davis as eval_davis
    from stemseg_jax.evaluation import kitti_mots as eval_kitti
    from stemseg_jax.evaluation import ytvis as eval_ytvis

    d = small_sets["davis"]
    for seq in d["splits"]["val"]:
        shutil.copytree(os.path.join(d["val_gt"], seq), tmp_path / "davis" / seq)
    assert eval_davis.evaluate_davis(d["root"], str(tmp_path / "davis"), split="val")["global"]["J&F-Mean"] == 1.0

    k = small_sets["kitti_mots"]
    (tmp_path / "kitti").mkdir()
    for seq in k["splits"]["val"]:
        lines = [ln for ln in open(os.path.join(k["val_gt"], f"{seq}.txt")) if ln.split()[2] != "10"]
        (tmp_path / "kitti" / f"{seq}.txt").write_text("".join(lines))
    result = eval_kitti.evaluate_kitti_mots(k["root"], str(tmp_path / "kitti"), sequences=k["splits"]["val"])
    for cls in result["classes"].values():
        if cls["mots_tools"]["n_gt"]:
            assert cls["mots_tools"]["sMOTSA"] == 1.0

    y = small_sets["ytvis"]
    gt = json.load(open(y["val_gt"]))
    preds = [dict(video_id=a["video_id"], category_id=a["category_id"], score=1.0,
                  segmentations=[None if s is None else io.encode_rle(io.decode_segmentation(s, *s["size"], "gt"))
                                 for s in a["segmentations"]]) for a in gt["annotations"]]  # fmt: skip
    io.write_json(str(tmp_path / "results.json"), preds)
    assert eval_ytvis.evaluate_ytvis(y["val_gt"], str(tmp_path / "results.json"))["stats"]["AP"] > 0.999
