"""The training input pipeline: batch contract, determinism, resumption, sharding, workers, clip rules."""

import os

import cv2
import numpy as np
import pytest

from configs import youtube_vis
from stemseg_jax import config as base
from stemseg_jax.data import pipeline
from stemseg_jax.data.records import VideoRecord
from stemseg_jax.preprocessing import PAD_VALUE_BGR, compute_resize_dims

# Instance colours (BGR); index 0 is the background. Far apart so a pixel's colour names its instance.
COLOURS = np.array([[40, 40, 40], [230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40], [230, 40, 230]])


class LabelMapSource:
    """Masks from a ``[F, H, W]`` label-map ``.npy`` (value = instance id, 255 = ignore). Picklable."""

    def __init__(self, path):
        self.path = path

    def load(self, frame_indices, instance_ids):
        labels = np.load(self.path)[list(frame_indices)]
        masks = np.stack([labels == i for i in instance_ids]) if instance_ids else np.zeros((0, *labels.shape), bool)
        return masks, labels == 255


def make_record(root, name, num_frames, h, w, num_instances, *, is_image=False, sizes=None):
    """Instances are rectangles moving right/down; each has a fixed colour, frame t is written as PNG."""
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    labels = np.zeros((num_frames, h, w), np.uint8)
    sizes = sizes or [(h // 3, w // 4)] * num_instances
    for t in range(num_frames):
        for i, (bh, bw) in enumerate(sizes, start=1):
            y, x = (5 * i + t) % (h - bh), (11 * i + 2 * t) % (w - bw)
            labels[t, y : y + bh, x : x + bw] = i
        labels[t, h - 6 :, : w // 5] = 255  # an ignore strip
    paths = []
    for t in range(num_frames):
        image = COLOURS[np.where(labels[t] == 255, 0, labels[t])].astype(np.uint8)
        paths.append(os.path.join(out, f"{t:05d}.png"))
        cv2.imwrite(paths[-1], image)
    np.save(os.path.join(out, "labels.npy"), labels)
    present = tuple(frozenset(int(v) for v in np.unique(f) if 0 < v < 255) for f in labels)
    return VideoRecord(
        name=name,
        frame_paths=tuple(paths),
        height=h,
        width=w,
        categories={i: i + 1 for i in range(1, num_instances + 1)},
        frame_instances=present,
        masks=LabelMapSource(os.path.join(out, "labels.npy")),
        is_image=is_image,
        source=os.path.join(out, "labels.npy"),
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pipeline_data"))
    videos = [make_record(root, f"v{i}", 14 + i, 50, 70, i + 1) for i in range(3)]
    images = [
        make_record(root, f"im{i}", 1, 70 if i % 2 else 50, 50 if i % 2 else 70, 2 + i, is_image=True)
        for i in range(4)
    ]
    config = youtube_vis.get_config("tiny")
    config.data.datasets = dict(
        vid=base.dataset("ytvis", root, "train", 0.6), img=base.dataset("coco", root, "train", 0.4)
    )
    config.train.num_steps = 10
    config.data.num_workers = 0
    return config, dict(vid=videos, img=images), root


def _take(config, records, n, **kw):
    it = pipeline.build_train_iterator(config, records_by_dataset=records, num_workers=kw.pop("num_workers", 0), **kw)
    try:
        return [{k: np.array(v) for k, v in next(it).items()} for _ in range(n)]
    finally:
        it.close()


def _assert_equal_batches(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def reference_batches(data):
    config, records, _ = data
    return _take(config, records, 6, seed=0)


def test_batch_contract(data, reference_batches):
    config, records, _ = data
    b, i_max, t = config.train.batch_size, config.data.max_instances, config.data.num_frames
    shapes = set()
    for batch in reference_batches:
        images = batch["images"]
        assert images.dtype == np.uint8 and images.shape[:2] == (b, t) and images.shape[-1] == 3
        hp, wp = images.shape[2:4]
        assert hp % 32 == 0 and wp % 32 == 0
        shapes.add((hp, wp))
        assert batch["masks"].shape == (b, i_max, t, hp, wp) and batch["masks"].dtype == bool
        assert batch["ignore"].shape == (b, t, hp, wp) and batch["ignore"].dtype == bool
        assert batch["instance_valid"].shape == (b, i_max) and batch["instance_valid"].dtype == bool
        assert batch["category_ids"].shape == (b, i_max) and batch["category_ids"].dtype == np.int32
        assert batch["clip_ids"].shape == (b,)
        valid = batch["instance_valid"]
        assert (np.sort(valid, axis=1)[:, ::-1] == valid).all()  # valid slots first
        np.testing.assert_array_equal(batch["category_ids"] > 0, valid)
        np.testing.assert_array_equal(batch["masks"].any(axis=(2, 3, 4)), valid)
        for k, cid in enumerate(batch["clip_ids"]):
            name, rec_name = str(cid).split("/")[:2]
            rec = next(r for r in records[name] if r.name == rec_name)
            h, w = compute_resize_dims(rec.height, rec.width, config.data.min_dim, config.data.max_dim)
            assert h < hp or w < wp  # these fixtures always need padding
            pad = np.ones((hp, wp), bool)
            pad[:h, :w] = False
            assert (images[k][:, pad] == np.asarray(PAD_VALUE_BGR, np.uint8)).all()
            assert not batch["masks"][k][..., pad].any() and not batch["ignore"][k][:, pad].any()
            if name == "vid":  # real frames: masks agree with the instance colours after resizing
                assert "frames" in str(cid)
                for i in np.flatnonzero(valid[k]):
                    cat = batch["category_ids"][k, i]
                    pix = images[k][batch["masks"][k, i]].astype(int)
                    close = np.abs(pix - COLOURS[cat - 1]).max(axis=1) < 40
                    assert close.mean() > 0.8  # category = instance id + 1 = colour index + 1 (copies too)
    assert len(shapes) == 2  # a landscape and a portrait bucket, not one padded square


def test_mixture_quotas_in_the_plan(data):
    config, records, _ = data
    sources = pipeline.load_sources(config, records)
    plan = pipeline.build_epoch_plan(config, sources, seed=0, epoch=0)
    counts = np.bincount(plan.sample_dataset, minlength=2)
    assert dict(zip(sources.names, counts.tolist())) == {"img": 8, "vid": 12}  # round(w * 10 * 2)
    assert (plan.sample_bucket[plan.batches] == plan.sample_bucket[plan.batches[:, :1]]).all()
    assert len(plan.batches) >= config.train.num_steps


def test_deterministic_and_resumable(data, reference_batches):
    config, records, _ = data
    again = _take(config, records, 2, seed=0)
    for a, b in zip(again, reference_batches):
        _assert_equal_batches(a, b)
    resumed = _take(config, records, 3, seed=0, start_step=3)
    for a, b in zip(resumed, reference_batches[3:]):
        _assert_equal_batches(a, b)
    other = _take(config, records, 2, seed=1)
    assert any(not np.array_equal(a["images"], b["images"]) for a, b in zip(other, reference_batches))


def test_runs_past_one_epoch(data):
    config, records, _ = data
    sources = pipeline.load_sources(config, records)
    n = len(pipeline.build_epoch_plan(config, sources, 0, 0).batches)
    loader = pipeline.BatchLoader(config, sources, seed=0)
    plan0, first = loader.step_samples(1)
    plan1, later = loader.step_samples(n + 1)
    assert plan1 is not plan0
    assert loader(n + 1)["images"].shape[0] == config.train.batch_size


def test_shards_split_the_global_batch(data, reference_batches):
    config, records, _ = data
    parts = [_take(config, records, 2, seed=0, shard_index=s, shard_count=2) for s in range(2)]
    for step in range(2):
        for k in ("images", "masks", "ignore", "instance_valid", "category_ids", "clip_ids"):
            joined = np.concatenate([parts[0][step][k], parts[1][step][k]])
            np.testing.assert_array_equal(joined, reference_batches[step][k])
    with pytest.raises(ValueError, match="shard_count"):
        _take(config, records, 1, seed=0, shard_index=0, shard_count=3)


def test_worker_processes_give_the_same_batches(data, reference_batches):
    config, records, _ = data
    from_workers = _take(config, records, 3, seed=0, num_workers=1)
    for a, b in zip(from_workers, reference_batches):
        _assert_equal_batches(a, b)


# ------------------------------------------------------------------------------------------ clip rules


def _flip_seed():
    return next(s for s in range(100) if np.random.default_rng(s).random() < 0.5)


def test_video_flip_flips_the_whole_clip(data):
    config, records, _ = data
    rec = records["vid"][2]
    frames = np.arange(8)
    ds_cfg = config.data.datasets.vid
    d = config.data.copy_and_resolve_references()
    d.instance_duplication = False
    d.video_flip = False
    plain = pipeline.load_clip(rec, frames, ds_cfg, d, np.random.default_rng(_flip_seed()), (96, 160))
    d.video_flip = True
    flipped = pipeline.load_clip(rec, frames, ds_cfg, d, np.random.default_rng(_flip_seed()), (96, 160))
    h, w = compute_resize_dims(rec.height, rec.width, d.min_dim, d.max_dim)
    np.testing.assert_array_equal(flipped["images"][:, :h, :w], plain["images"][:, :h, :w][:, :, ::-1])
    np.testing.assert_array_equal(flipped["masks"][:, :, :h, :w], plain["masks"][:, :, :h, :w][..., ::-1])
    np.testing.assert_array_equal(flipped["ignore"][:, :h, :w], plain["ignore"][:, :h, :w][..., ::-1])


def test_crop_width_cuts_a_window_of_the_whole_clip(data):
    config, records, _ = data
    rec = records["vid"][2]  # three instances
    d = config.data.copy_and_resolve_references()
    d.instance_duplication = False
    ds_cfg = config.data.datasets.vid
    h, w = compute_resize_dims(rec.height, rec.width, d.min_dim, d.max_dim)
    seen_x0, seen_fewer = set(), False
    for seed in range(12):
        whole = pipeline.load_clip(rec, np.arange(8), ds_cfg, d, np.random.default_rng(seed), (96, 160))
        d.crop_width = 32
        # The window's position is the clip's last random draw, so the same seed gives the same clip.
        win = pipeline.load_clip(rec, np.arange(8), ds_cfg, d, np.random.default_rng(seed), (96, 32))
        d.crop_width = 0
        x0 = next(x for x in range(w - 32 + 1) if np.array_equal(whole["images"][:, :, x : x + 32], win["images"]))
        seen_x0.add(x0)
        np.testing.assert_array_equal(win["ignore"], whole["ignore"][..., x0 : x0 + 32])
        inside = whole["instance_valid"] & whole["masks"][..., x0 : x0 + 32].any(axis=(1, 2, 3))
        n = int(inside.sum())
        seen_fewer |= n < whole["instance_valid"].sum()
        assert win["instance_valid"].tolist() == [True] * n + [False] * (len(inside) - n)
        np.testing.assert_array_equal(win["masks"][:n], whole["masks"][inside][..., x0 : x0 + 32])
        assert not win["masks"][n:].any()
        assert win["category_ids"][:n].tolist() == whole["category_ids"][inside].tolist()
    assert len(seen_x0) > 3 and seen_fewer  # random positions, and some windows lose an instance


def test_crop_width_batches_and_bad_value(data):
    config, records, _ = data
    c = config.copy_and_resolve_references()
    c.data.crop_width = 64
    batches = _take(c, records, 6, seed=0)
    shapes = {(b["images"].shape[2:4], b["masks"].shape[-2:], b["ignore"].shape[-2:]) for b in batches}
    # Landscape 96x160 batches become 96x96 windows (never narrower than tall); portrait 160x96 stay whole.
    assert shapes == {((96, 96),) * 3, ((160, 96),) * 3}
    c.data.crop_width = 100
    with pytest.raises(ValueError, match="config.data.crop_width must be 0 .* multiple of 32, got 100"):
        _take(c, records, 1, seed=0)


def test_single_instance_video_is_duplicated(data):
    config, records, _ = data
    rec = records["vid"][0]  # one instance
    rng = np.random.default_rng(0)
    out = pipeline.load_clip(rec, np.arange(8), config.data.datasets.vid, config.data, rng, (96, 160))
    assert out["instance_valid"].sum() == 2
    assert out["category_ids"][0] == out["category_ids"][1] == rec.categories[1]


def test_overflow_instances_go_to_ignore_largest_kept(tmp_path, data):
    config, _, _ = data
    rec = make_record(str(tmp_path), "many", 10, 50, 70, 3, sizes=[(20, 20), (8, 8), (14, 14)])
    d = config.data.copy_and_resolve_references()
    d.max_instances = 2
    d.video_flip = False
    rng = np.random.default_rng(0)
    out = pipeline.load_clip(rec, np.arange(8), base.dataset("ytvis", "", "train"), d, rng, (96, 160))
    assert out["masks"].shape[0] == 2 and out["instance_valid"].all()
    assert out["category_ids"].tolist() == [2, 4]  # instances 1 and 3 (the largest); category = id + 1
    labels = np.load(rec.masks.path)[:8]
    h, w = compute_resize_dims(50, 70, d.min_dim, d.max_dim)
    small = np.stack([cv2.resize(m.astype(np.float32), (w, h)) > 0.5 for m in labels == 2])
    assert out["ignore"][:, :h, :w][small].all()  # the dropped instance is ignore now


def test_class_agnostic_and_davis_background_ignore(data):
    config, records, _ = data
    rec = records["vid"][1]
    d = config.data.copy_and_resolve_references()
    d.class_agnostic, d.video_flip, d.instance_duplication = True, False, False
    rng = np.random.default_rng(0)
    out = pipeline.load_clip(rec, np.arange(8), base.dataset("davis", "", "train"), d, rng, (96, 160))
    assert out["category_ids"].tolist() == [1, 1] + [0] * (d.max_instances - 2)
    h, w = compute_resize_dims(rec.height, rec.width, d.min_dim, d.max_dim)
    fg = out["masks"].any(axis=0)[:, :h, :w]
    # unannotated pixels are ignore (official DAVIS), up to resize seams on instance borders
    assert (out["ignore"][:, :h, :w] | fg).mean() > 0.97
    assert not (out["ignore"][:, :h, :w] & fg).any()
    assert not out["ignore"][:, h:].any() and not out["ignore"][:, :, w:].any()  # padding stays background


def test_bad_frame_names_the_clip_and_file(tmp_path, data):
    config, _, _ = data
    rec = make_record(str(tmp_path), "broken", 12, 50, 70, 1)
    # Not a missing file (the up-front metadata check reports those before any clip is read): one that
    # exists but does not decode, found only when a clip reads it.
    with open(rec.frame_paths[3], "wb") as fh:
        fh.write(b"not an image")
    c = config.copy_and_resolve_references()
    c.data.datasets = dict(vid=base.dataset("ytvis", str(tmp_path), "train", 1.0))
    c.train.num_steps = 3
    with pytest.raises(ValueError, match=r"vid/broken/frames .*00003\.png"):
        _take(c, dict(vid=[rec]), 3, seed=0)
    c.data.augmentation = "strong"
    with pytest.raises(ValueError, match="config.data.augmentation"):
        _take(c, dict(vid=[rec]), 1, seed=0)


# ------------------------------------------------------------------------------------------ real readers


def test_synthetic_datasets_through_the_readers(tmp_path_factory):
    from stemseg_jax.data import synthetic

    root = tmp_path_factory.mktemp("synthetic")
    videos = synthetic.generate("ytvis", str(root / "ytvis"), seed=0, num_train=3, num_val=0, num_frames=14)
    images = synthetic.generate("coco", str(root / "coco"), seed=0, num_train=6, num_val=0)
    config = youtube_vis.get_config("tiny")
    config.data.datasets = dict(
        youtube_vis=synthetic.dataset_config("ytvis", videos["root"], weight=0.5),
        coco=synthetic.dataset_config("coco", images["root"], weight=0.5),
    )
    config.train.num_steps = 6
    batches = _take(config, None, 6, seed=3, num_workers=1)
    names = {str(c).split("/")[0] for b in batches for c in b["clip_ids"]}
    assert names == {"youtube_vis", "coco"}
    for b in batches:
        assert b["images"].shape[:2] == (2, config.data.num_frames)
        assert b["instance_valid"].any(axis=1).all()
        valid_cats = b["category_ids"][b["instance_valid"]]
        assert ((valid_cats >= 1) & (valid_cats < config.model.num_classes)).all()


def test_show_clips_writes_sheet_and_gif(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from stemseg_jax.data import synthetic

    data = synthetic.generate("kitti_mots", str(tmp_path / "kitti"), seed=1, num_train=2, num_val=0, num_frames=14)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "clips"
    cmd = [
        sys.executable, os.path.join(repo, "tools", "show_clips.py"), "--config", "configs/kitti.py:tiny",
        f"--config.data.datasets.kitti_mots.root={data['root']}", "--config.train.num_steps=4",
        "--num_batches", "2", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    sheet = cv2.imread(str(out / "clips.png"))
    assert sheet is not None and sheet.shape[0] >= 4 * 96  # one row per clip: 2 batches x 2 clips
    with Image.open(out / "clips.gif") as gif:
        assert gif.n_frames == 8  # one animation frame per clip frame
