"""``format: "tfds"``: datasets read through tensorflow-datasets builders give the file readers' records and clips."""

import json
import os
import sys

import ml_collections
import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from configs import youtube_vis  # noqa: E402
from stemseg_jax.data import pipeline, synthetic, tfds_source  # noqa: E402
from stemseg_jax.data.readers import READERS, load_dataset, tfds_format  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import prepare_tfds  # noqa: E402

sys.path.pop(0)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """Synthetic YouTube-VIS (train + valid, one packing) and COCO (through the tool), packed with tfds."""
    tmp = tmp_path_factory.mktemp("tfds_format")
    yv = synthetic.generate("ytvis", str(tmp / "ytvis"), seed=3, num_train=3, num_val=2, num_frames=7,
                            height=48, width=64)  # fmt: skip
    coco = synthetic.generate("coco", str(tmp / "coco"), seed=4, num_train=4, num_val=1, height=48, width=64)
    files = dict(
        vis=synthetic.dataset_config("ytvis", yv["root"], "train"),
        vis_val=synthetic.dataset_config("ytvis", yv["root"], "val"),
        img=synthetic.dataset_config("coco", coco["root"], "train"),
    )
    yv_dir, coco_dir = str(tmp / "tfds_ytvis"), str(tmp / "tfds_coco")
    assert tfds_source.prepare_splits({"train": files["vis"], "valid": files["vis_val"]}, yv_dir) == ["train", "valid"]
    split = files["img"]["split"]
    args = ["--format", "coco", "--root", coco["root"], "--split", split, "--data-dir", coco_dir]
    assert prepare_tfds.main(args) == 0
    tfds = dict(
        vis=dict(format="tfds", data_dir=yv_dir, split="train", frame_cache=str(tmp / "cache_train")),
        vis_val=dict(format="tfds", root=yv_dir, split="valid"),  # root stands for data_dir; default cache
        img=dict(format="tfds", data_dir=coco_dir, builder="stemseg_videos", split=split),
    )
    return files, tfds, tmp


def _assert_same_records(file_records, tfds_records, distinct_files=True):
    assert [r.name for r in tfds_records] == [r.name for r in file_records]  # same order: the sampler indexes it
    for a, b in zip(file_records, tfds_records):
        assert (b.height, b.width, b.is_image, b.categories) == (a.height, a.width, a.is_image, a.categories)
        assert b.frame_instances == a.frame_instances
        assert [os.path.basename(p) for p in b.frame_paths] == [os.path.basename(p) for p in a.frame_paths]
        for pa, pb in zip(a.frame_paths, b.frame_paths):
            assert (pa != pb) == distinct_files
            with open(pa, "rb") as fa, open(pb, "rb") as fb:
                assert fa.read() == fb.read(), pb
        frames, ids = list(range(a.num_frames)), list(a.instance_ids)
        for x, y in zip(a.masks.load(frames, ids), b.masks.load(frames, ids)):
            np.testing.assert_array_equal(x, y)


def test_records_match_the_file_readers(packed):
    files, tfds, tmp = packed
    for key in ("vis", "vis_val", "img"):
        _assert_same_records(load_dataset(files[key]), load_dataset(tfds[key], f"data.datasets.{key}"))
    assert any(r.instance_ids for r in load_dataset(tfds["vis"]))
    assert os.path.isfile(str(tmp / "cache_train" / "index.json"))
    assert "tensorflow" not in sys.modules


def test_train_clips_are_bit_identical(packed):
    files, tfds, _ = packed

    def loader(entries):
        config = youtube_vis.get_config("tiny")
        config.data.min_dim, config.data.max_dim = 64, 96
        config.data.num_frames, config.data.max_instances, config.data.frame_gap = 3, 4, 3
        config.data.datasets = {k: ml_collections.ConfigDict({**entries[k], "weight": w})
                                for k, w in (("vis", 0.7), ("img", 0.3))}  # fmt: skip
        config.train.num_steps = 4
        return pipeline.BatchLoader(config, pipeline.load_sources(config), seed=11)

    # The tfds format does not know the packed format's options: the entry sets ytvis's.
    with_options = dict(tfds, vis=dict(tfds["vis"], instance_duplication=True))
    a, b = loader(files), loader(with_options)
    seen = set()
    for step in range(4):
        x, y = a(step), b(step)
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"step {step} {k}")
        seen |= {str(c).split("/")[0] for c in x["clip_ids"]}
        assert x["instance_valid"].any()
    assert seen == {"vis", "img"}


def test_second_load_reads_the_index_not_the_shards(packed, monkeypatch):
    _, tfds, _ = packed
    first = load_dataset(tfds["vis"])

    def fail(*args):
        raise AssertionError("shards read again")

    monkeypatch.setattr(tfds_format, "_build_index", fail)
    _assert_same_records(first, load_dataset(tfds["vis"]), distinct_files=False)
    assert [r.name for r in load_dataset(dict(tfds["vis"], sequences=[first[1].name]))] == [first[1].name]


def test_catalog_davis_builder(tmp_path):
    """A tiny dataset in the catalog ``davis`` builder's own features (its ``_info``), written here (its
    generator needs TensorFlow and a download), read through ``builder: davis/480p``."""
    from tensorflow_datasets.video.davis import davis as catalog

    info = synthetic.generate("davis", str(tmp_path / "davis"), seed=2, num_train=2, num_val=1, num_frames=4,
                              height=40, width=56)  # fmt: skip
    ref = load_dataset(synthetic.dataset_config("davis", info["root"], "train"))

    class TinyDavis(catalog.Davis, skip_registration=True):
        name = "davis"
        code_path = None

        def _split_generators(self, dl_manager):
            return {"train": self._generate()}

        def _generate(self):
            for r in ref:  # file paths: tfds stores the bytes (encoding arrays would need TensorFlow)
                labels = [p.replace("JPEGImages", "Annotations_unsupervised").replace(".jpg", ".png")
                          for p in r.frame_paths]  # fmt: skip
                video = {"frames": list(r.frame_paths), "segmentations": labels}
                yield r.name, {"video": video, "metadata": {"num_frames": r.num_frames, "video_name": r.name}}

    TinyDavis(data_dir=str(tmp_path / "tfds"), config="480p", file_format="array_record").download_and_prepare()
    got = load_dataset(dict(format="tfds", data_dir=str(tmp_path / "tfds"), builder="davis/480p", split="train"))
    _assert_same_records(ref, sorted(got, key=lambda r: [x.name for x in ref].index(r.name)))


def test_clear_errors(packed, tmp_path):
    _, tfds, _ = packed
    assert "tfds" in READERS
    with pytest.raises(ValueError, match=r"split='test'.*has splits \['train', 'valid'\]"):
        load_dataset(dict(tfds["vis"], split="test", frame_cache=str(tmp_path / "c")))
    with pytest.raises(FileNotFoundError, match="builder='davis'.*prepare it first"):
        load_dataset(dict(tfds["vis"], builder="davis"))
    with pytest.raises(ValueError, match="data.datasets.x.data_dir is empty"):
        load_dataset(dict(format="tfds", split="train"), "data.datasets.x")
    fake = tmp_path / "d" / "youtube_vis" / "only_frames_with_labels" / "1.0.0"
    fake.mkdir(parents=True)
    (fake / "dataset_info.json").write_text(json.dumps({"name": "youtube_vis"}))
    with pytest.raises(FileNotFoundError, match="builder configs there"):
        load_dataset(dict(format="tfds", data_dir=str(tmp_path / "d"), builder="youtube_vis"))
    with pytest.raises(ValueError, match="'youtube_vis' cannot serve.*TensorFlow"):
        load_dataset(dict(format="tfds", data_dir=str(tmp_path / "d"), builder="youtube_vis/only_frames_with_labels"))
    with pytest.raises(ValueError, match="already holds a packing with splits"):
        tfds_source.prepare_splits({"other": dict(format="ytvis", root="/nonexistent")}, tfds["vis"]["data_dir"])
    config_file = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "youtube_vis.py")
    assert prepare_tfds.main(["--data-dir", str(tmp_path), "--config", config_file]) == 2  # no --dataset


def test_config_variant():
    c = youtube_vis.get_config("tfds,tiny")
    assert c.data.datasets.youtube_vis.format == "tfds" and c.data.datasets.youtube_vis.instance_duplication
    assert c.data.val_dataset.format == "tfds" and c.data.val_dataset.split == "valid"
    with pytest.raises(ValueError, match="cannot be combined"):
        youtube_vis.get_config("tfds,local")
