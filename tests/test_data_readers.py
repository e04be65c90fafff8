"""Readers on small hand-written fixtures: each format's edge cases and its bad-input errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from stemseg_jax import io
from stemseg_jax.data import categories as cats
from stemseg_jax.data import load_dataset
from stemseg_jax.data.readers import common

# pycocotools 2.0.11 warns on every decode under numpy 2 (its own __array__ call); nothing to fix here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
RNG = np.random.default_rng(1234)


def _image(path, h, w):
    io.write_image(path, RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _blob(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _rle_str(m):
    return io.encode_rle(m)["counts"]


def _load_all(rec):
    return rec.masks.load(list(range(rec.num_frames)), list(rec.instance_ids))


# ------------------------------------------------------------------------------------------ io / RLE


def test_rle_roundtrips_against_pycocotools():
    for _ in range(30):
        h, w = (int(x) for x in RNG.integers(1, 40, 2))
        m = RNG.random((h, w)) < RNG.random()
        unc = io.encode_rle_uncompressed(m)
        assert sum(unc["counts"]) == h * w
        np.testing.assert_array_equal(io.decode_segmentation(unc, h, w, "t"), m)
        # The uncompressed form decodes identically through pycocotools' own path.
        ref = mask_utils.decode(mask_utils.frPyObjects(unc, h, w)).astype(bool)
        np.testing.assert_array_equal(ref, m)
        comp = io.encode_rle(m)
        assert io.compressed_rle_total(comp["counts"].encode()) == h * w
        np.testing.assert_array_equal(io.decode_segmentation(comp["counts"], h, w, "t"), m)


def test_rle_size_mismatch_is_an_error_naming_the_place():
    m = _blob(20, 30, 5, 15, 5, 25)
    counts = _rle_str(m)
    with pytest.raises(ValueError, match="f.json frame 3.*covers 600 pixels"):
        io.decode_segmentation(counts, 40, 30, "f.json frame 3")  # pycocotools alone decodes garbage here
    with pytest.raises(ValueError, match="RLE size"):
        io.decode_segmentation({"size": [20, 31], "counts": counts}, 20, 30, "x")
    with pytest.raises(ValueError, match="uncompressed RLE covers"):
        io.decode_segmentation({"size": [20, 30], "counts": [5, 10]}, 20, 30, "x")


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        io.read_image(str(tmp_path / "missing.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        io.read_image(str(bad))
    img = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    io.write_image(str(tmp_path / "ok.png"), img)
    np.testing.assert_array_equal(io.read_image(str(tmp_path / "ok.png")), img)


def test_root_errors_name_field_value_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("D1_TEST_ROOT", str(tmp_path / "nowhere"))
    cfg = dict(format="davis", root="$D1_TEST_ROOT", split="train")
    with pytest.raises(FileNotFoundError, match=r"data.datasets.davis.root='\$D1_TEST_ROOT'.*nowhere"):
        load_dataset(cfg, "data.datasets.davis")
    monkeypatch.delenv("D1_TEST_ROOT")
    with pytest.raises(ValueError, match="D1_TEST_ROOT.*not set"):
        load_dataset(cfg, "data.datasets.davis")
    with pytest.raises(ValueError, match="unknown format"):
        load_dataset(dict(format="nope", root=str(tmp_path)), "x")


# ------------------------------------------------------------------------------------------ DAVIS


def _davis_fixture(root, h=12, w=16):
    """seq 'a': ids 1 and 3 (2 skipped), void 255 in frame 1, id 3 absent in frame 2."""
    labels = {"a": [], "b": []}
    for t in range(3):
        lab = np.zeros((h, w), np.uint8)
        lab[1:5, 1:6] = 1
        if t != 2:
            lab[6:10, 8:14] = 3
        if t == 1:
            lab[0, :] = 255
        labels["a"].append(lab)
    for t in range(2):
        lab = np.zeros((h, w), np.uint8)
        lab[2:9, 2 + t : 9 + t] = 1
        labels["b"].append(lab)
    for seq, labs in labels.items():
        for t, lab in enumerate(labs):
            _image(os.path.join(root, "JPEGImages/480p", seq, f"{t:05d}.jpg"), h, w)
            io.write_indexed_png(os.path.join(root, "Annotations_unsupervised/480p", seq, f"{t:05d}.png"), lab)
    io.write_text(os.path.join(root, "ImageSets/2017/train.txt"), "a\nb\n")
    return labels


def test_davis_reader(tmp_path):
    root = str(tmp_path)
    labels = _davis_fixture(root)
    recs = load_dataset(dict(format="davis", root=root, split="train"))
    assert [r.name for r in recs] == ["a", "b"]
    a = recs[0]
    assert (a.height, a.width, a.num_frames) == (12, 16, 3)
    assert a.categories == {1: 1, 3: 1}
    assert a.frame_instances == (frozenset({1, 3}), frozenset({1, 3}), frozenset({1}))
    masks, ignore = a.masks.load([2, 1], [3, 1])
    for j, t in enumerate([2, 1]):
        np.testing.assert_array_equal(masks[0, j], labels["a"][t] == 3)
        np.testing.assert_array_equal(masks[1, j], labels["a"][t] == 1)
        np.testing.assert_array_equal(ignore[j], labels["a"][t] == 255)
    assert ignore[1].sum() == 16 and not ignore[0].any()


def test_davis_bad_input(tmp_path):
    root = str(tmp_path)
    _davis_fixture(root)
    cfg = dict(format="davis", root=root, split="train")
    # A frame list with a hole.
    os.rename(os.path.join(root, "JPEGImages/480p/a/00001.jpg"), os.path.join(root, "JPEGImages/480p/a/00009.jpg"))
    with pytest.raises(ValueError, match="sequence 'a'.*hole: frame 1 is missing"):
        load_dataset(cfg)
    os.rename(os.path.join(root, "JPEGImages/480p/a/00009.jpg"), os.path.join(root, "JPEGImages/480p/a/00001.jpg"))
    # A missing annotation PNG: error, or an unannotated frame when allowed.
    png = os.path.join(root, "Annotations_unsupervised/480p/b/00001.png")
    saved = open(png, "rb").read()
    os.remove(png)
    with pytest.raises(FileNotFoundError, match="00001.png.*frame 1 of sequence 'b'"):
        load_dataset(cfg)
    recs = load_dataset(dict(cfg, allow_unannotated=True))
    assert recs[1].frame_instances[1] == frozenset()
    assert not _load_all(recs[1])[0][:, 1].any()
    # A corrupt PNG is an error naming it (at load time, since presence needs decoding).
    with open(png, "wb") as f:
        f.write(saved[:40])
    with pytest.raises(ValueError, match="00001.png"):
        load_dataset(cfg)
    # A PNG of another size than the frames.
    io.write_indexed_png(png, np.zeros((5, 5), np.uint8))
    rec = load_dataset(cfg)[1]
    with pytest.raises(ValueError, match="00001.png.*label PNG is 5x5, frames are 12x16"):
        _load_all(rec)
    # An empty split file.
    io.write_text(os.path.join(root, "ImageSets/2017/val.txt"), "")
    with pytest.raises(ValueError, match="val.txt is empty"):
        load_dataset(dict(cfg, split="val"))


def test_davis_index_cache(tmp_path):
    root = str(tmp_path / "d")
    _davis_fixture(root)
    cache = str(tmp_path / "cache.json")
    first = load_dataset(dict(format="davis", root=root, split="train", index_cache=cache))
    assert os.path.isfile(cache)
    second = load_dataset(dict(format="davis", root=root, split="train", index_cache=cache))
    assert [r.frame_instances for r in first] == [r.frame_instances for r in second]


# ------------------------------------------------------------------------------------------ YouTube-VIS


def _ytvis_fixture(root, h=10, w=14):
    """Video 1 (3 frames): RLE-compressed, uncompressed and polygon masks, a null frame, a crowd region."""
    for t in range(3):
        _image(os.path.join(root, "train/JPEGImages/v1", f"{5 * t:05d}.jpg"), h, w)
    for t in range(2):
        _image(os.path.join(root, "train/JPEGImages/v2", f"{5 * t:05d}.jpg"), h, w)
    m_a = [_blob(h, w, 1, 4, 1, 5), _blob(h, w, 2, 5, 2, 6), None]
    m_b = [_blob(h, w, 6, 9, 7, 12), _blob(h, w, 6, 9, 8, 13), _blob(h, w, 5, 9, 8, 13)]
    crowd = _blob(h, w, 0, 2, 10, 14)
    poly = [[2.0, 2.0, 6.0, 2.0, 6.0, 7.0, 2.0, 7.0]]
    anns = [
        dict(id=7, video_id=1, category_id=6, iscrowd=0, areas=[12, 12, None],
             segmentations=[io.encode_rle(m_a[0]), io.encode_rle_uncompressed(m_a[1]), None]),
        dict(id=9, video_id=1, category_id=1, iscrowd=0, areas=[15, 15, 0],
             segmentations=[io.encode_rle(m) for m in m_b]),
        dict(id=11, video_id=1, category_id=1, iscrowd=1, segmentations=[io.encode_rle(crowd), None, None]),
        dict(id=12, video_id=2, category_id=8, iscrowd=0, segmentations=[poly, None]),
    ]  # fmt: skip
    videos = [
        dict(id=1, height=h, width=w, length=3, file_names=[f"v1/{5 * t:05d}.jpg" for t in range(3)]),
        dict(id=2, height=h, width=w, length=2, file_names=[f"v2/{5 * t:05d}.jpg" for t in range(2)]),
    ]
    categories = [{"id": c, "name": cats.YTVIS_CATEGORIES[c]} for c in (1, 6, 8)]
    io.write_json(os.path.join(root, "train.json"), dict(videos=videos, annotations=anns, categories=categories))
    io.write_json(os.path.join(root, "valid.json"), dict(videos=videos, categories=categories))
    return m_a, m_b, crowd, poly


def test_ytvis_reader(tmp_path):
    root = str(tmp_path)
    m_a, m_b, crowd, poly = _ytvis_fixture(root)
    recs = load_dataset(dict(format="ytvis", root=root, split="train"))
    v1, v2 = recs
    assert v1.categories == {7: 6, 9: 1}
    # Frame 2: annotation 7 is null and annotation 9 has area 0 there, so neither is present.
    assert v1.frame_instances == (frozenset({7, 9}), frozenset({7, 9}), frozenset())
    assert v1.frame_paths[2].endswith(os.path.join("train", "JPEGImages", "v1", "00010.jpg"))
    masks, ignore = _load_all(v1)
    for t in range(2):
        np.testing.assert_array_equal(masks[0, t], m_a[t])
        np.testing.assert_array_equal(masks[1, t], m_b[t])
    assert not masks[:, 2].any()
    np.testing.assert_array_equal(ignore[0], crowd)
    assert not ignore[1:].any()
    ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, 10, 14))).astype(bool)
    np.testing.assert_array_equal(_load_all(v2)[0][0, 0], ref)
    assert ref.sum() > 0
    # Unannotated valid split.
    valid = load_dataset(dict(format="ytvis", root=root, split="valid", images="train/JPEGImages"))
    assert valid[0].categories == {} and _load_all(valid[0])[0].shape == (0, 3, 10, 14)
    # A category map: person -> 1, sedan dropped; class-agnostic.
    recs = load_dataset(dict(format="ytvis", root=root, split="train", category_map={1: 1, 6: 0, 8: 3}))
    assert recs[0].categories == {9: 1} and recs[1].categories == {12: 3}
    recs = load_dataset(dict(format="ytvis", root=root, split="train", class_agnostic=True))
    assert recs[0].categories == {7: 1, 9: 1}
    assert [r.name for r in load_dataset(dict(format="ytvis", root=root, split="train", sequences=["v2"]))] == ["2"]


def test_ytvis_bad_input(tmp_path):
    root = str(tmp_path)
    _ytvis_fixture(root)
    path = os.path.join(root, "train.json")
    data = json.load(open(path))
    cfg = dict(format="ytvis", root=root, split="train")
    with pytest.raises(ValueError, match="video 1, annotation 7.*category 6 is not in the category map"):
        load_dataset(dict(cfg, category_map={1: 1, 8: 1}))
    bad = json.loads(json.dumps(data))
    bad["annotations"][0]["segmentations"][0]["size"] = [11, 14]
    io.write_json(path, bad)
    rec = load_dataset(cfg)[0]
    with pytest.raises(ValueError, match=r"train.json \(sequence '1', frame 0 \[00000.jpg\], instance 7\): RLE size"):
        _load_all(rec)
    bad = json.loads(json.dumps(data))
    bad["annotations"][1]["segmentations"].pop()
    io.write_json(path, bad)
    with pytest.raises(ValueError, match="video 1, annotation 9.*2 segmentations for a video of 3 frames"):
        load_dataset(cfg)
    io.write_json(path, data)
    os.remove(os.path.join(root, "train/JPEGImages/v2/00005.jpg"))
    with pytest.raises(FileNotFoundError, match=r"train.json \(video 2\): frame 1 file .*00005.jpg does not exist"):
        load_dataset(cfg)
    open(path, "w").close()
    with pytest.raises(ValueError, match="train.json is empty"):
        load_dataset(cfg)


# ------------------------------------------------------------------------------------------ KITTI-MOTS


def _kitti_fixture(root, h=8, w=20, seqs=("0002", "0003"), first=0, ext="png", layout="kitti"):
    """Per sequence 3 frames; car 1005 (ids skip), pedestrian 2001 absent in frame 1, ignore in frame 0."""
    truth = {}
    for seq in seqs:
        car = [_blob(h, w, 1, 4, 2 + t, 8 + t) for t in range(3)]
        ped = [_blob(h, w, 4, 8, 12, 15), None, _blob(h, w, 3, 8, 13, 16)]
        ign = _blob(h, w, 0, 2, 17, 20)
        lines = []
        for t in range(3):
            f = t + first
            if layout == "kitti":
                img = os.path.join(root, "training/image_02", seq, f"{f:06d}.{ext}")
            else:
                img = os.path.join(root, "train", seq, "img1", f"{f:06d}.{ext}")
            _image(img, h, w)
            label = np.zeros((h, w), np.uint16)
            lines.append(f"{f} 1005 1 {h} {w} {_rle_str(car[t])}")
            label[car[t]] = 1005
            if ped[t] is not None:
                lines.append(f"{f} 2001 2 {h} {w} {_rle_str(ped[t])}")
                label[ped[t]] = 2001
            if t == 0:
                lines.append(f"{f} 10000 10 {h} {w} {_rle_str(ign)}")
                label[ign] = 10000
            if layout == "kitti":
                io.write_uint16_png(os.path.join(root, "instances", seq, f"{f:06d}.png"), label)
        txt = "".join(line + "\n" for line in lines)
        if layout == "kitti":
            io.write_text(os.path.join(root, "instances_txt", f"{seq}.txt"), txt)
        else:
            io.write_text(os.path.join(root, "train", seq, "gt", "gt.txt"), txt)
        truth[seq] = (car, ped, ign)
    return truth


def _check_kitti(rec, truth):
    car, ped, ign = truth
    assert rec.categories == {1005: 1, 2001: 2}
    assert rec.frame_instances == (frozenset({1005, 2001}), frozenset({1005}), frozenset({1005, 2001}))
    masks, ignore = rec.masks.load([0, 1, 2], [2001, 1005])
    for t in range(3):
        np.testing.assert_array_equal(masks[1, t], car[t])
        np.testing.assert_array_equal(masks[0, t], ped[t] if ped[t] is not None else np.zeros_like(car[t]))
    np.testing.assert_array_equal(ignore[0], ign)
    assert not ignore[1:].any()


def test_kitti_mots_txt_png_and_split(tmp_path):
    root = str(tmp_path)
    truth = _kitti_fixture(root)
    recs = load_dataset(dict(format="kitti_mots", root=root, split="val"))  # spec §7.1: 0002 is val, 0003 train
    assert [r.name for r in recs] == ["0002"]
    _check_kitti(recs[0], truth["0002"])
    assert [r.name for r in load_dataset(dict(format="kitti_mots", root=root, split="train"))] == ["0003"]
    # The PNG annotations give the same records.
    recs = load_dataset(dict(format="kitti_mots", root=root, split="fulltrain", annotations="instances"))
    assert [r.name for r in recs] == ["0002", "0003"]
    _check_kitti(recs[1], truth["0003"])
    # Explicit sequences and a rename.
    recs = load_dataset(dict(format="kitti_mots", root=root, split="", sequences=["0050"], rename={"0003": "0050"}))
    assert [r.name for r in recs] == ["0050"]


def test_mots_challenge_layout(tmp_path):
    root = str(tmp_path)
    truth = _kitti_fixture(root, seqs=("MOTS20-02",), first=1, ext="jpg", layout="mots20")
    recs = load_dataset(dict(format="mots_challenge", root=root, split="train", rename={"MOTS20-02": "0050"}))
    assert [r.name for r in recs] == ["0050"]
    car, ped, ign = truth["MOTS20-02"]
    assert recs[0].frame_instances[1] == frozenset({1005})
    masks, ignore = recs[0].masks.load([0], [1005])
    np.testing.assert_array_equal(masks[0, 0], car[0])


def test_kitti_mots_bad_input(tmp_path):
    root = str(tmp_path)
    _kitti_fixture(root, seqs=("0002",))
    txt = os.path.join(root, "instances_txt", "0002.txt")
    good = open(txt).read().splitlines()
    cfg = dict(format="kitti_mots", root=root, split="val")

    def expect(lines, pattern):
        io.write_text(txt, "".join(line + "\n" for line in lines))
        with pytest.raises(ValueError, match=pattern):
            load_dataset(cfg)

    expect(good + [good[0].replace(" 1005 1 ", " 3005 3 ")], r"0002.txt:7: class 3 \(object 3005\)")
    expect(good + [good[0]], r"0002.txt:7: object 1005 appears twice in frame 0")
    expect([good[0].replace(" 8 20 ", " 9 20 ")] + good[1:], r"0002.txt:1: mask size 9x20 disagrees")
    expect(good + ["7 1005 1 8 20 abc"], r"0002.txt:7: frame 7 has no image")
    expect(good + ["0 1005 1 8"], r"0002.txt:7: expected 6 fields")
    # An empty annotation file is a logged skip: the sequence has no objects.
    io.write_text(txt, "")
    rec = load_dataset(cfg)[0]
    assert rec.categories == {} and rec.frame_instances == (frozenset(),) * 3
    # A frame list with a hole.
    io.write_text(txt, "".join(line + "\n" for line in good))
    os.remove(os.path.join(root, "training/image_02/0002/000001.png"))
    with pytest.raises(ValueError, match="hole: frame 1 is missing"):
        load_dataset(cfg)
    with pytest.raises(ValueError, match="none of"):
        load_dataset(dict(cfg, sequences=["0099"]))


# ------------------------------------------------------------------------------------------ COCO


def test_coco_reader(tmp_path):
    root = str(tmp_path)
    h, w = 12, 16
    for i in (1, 2, 3):
        _image(os.path.join(root, "train2017", f"{i:012d}.jpg"), h, w)
    person, dog, crowd = _blob(h, w, 1, 6, 1, 6), _blob(h, w, 6, 11, 8, 15), _blob(h, w, 0, 3, 10, 16)
    poly = [[8.0, 6.0, 15.0, 6.0, 15.0, 11.0, 8.0, 11.0]]
    anns = [
        dict(id=101, image_id=1, category_id=1, iscrowd=0, segmentation=io.encode_rle(person), area=25),
        dict(id=102, image_id=1, category_id=18, iscrowd=0, segmentation=poly, area=35),
        dict(id=103, image_id=1, category_id=1, iscrowd=1, segmentation=io.encode_rle_uncompressed(crowd), area=18),
        dict(id=104, image_id=2, category_id=10, iscrowd=0, segmentation=io.encode_rle(dog), area=35),  # light
    ]
    images = [dict(id=i, file_name=f"{i:012d}.jpg", height=h, width=w) for i in (1, 2, 3)]
    path = os.path.join(root, "annotations", "instances_train2017.json")
    io.write_json(path, dict(images=images, annotations=anns, categories=[]))
    cfg = dict(format="coco", root=root, split="train2017")
    recs = load_dataset(cfg)
    assert [r.name for r in recs] == ["1", "2"]  # image 3 has no instances: skipped
    r = recs[0]
    assert r.is_image and r.categories == {1: 1, 2: 18} and r.frame_instances == (frozenset({1, 2}),)
    masks, ignore = _load_all(r)
    np.testing.assert_array_equal(masks[0, 0], person)
    ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, h, w))).astype(bool)
    np.testing.assert_array_equal(masks[1, 0], ref)
    np.testing.assert_array_equal(ignore[0], crowd)
    # coco_to_ytvis: person -> 1, dog -> 8, traffic light dropped (image 2 then has nothing).
    recs = load_dataset(dict(cfg, category_map="coco_to_ytvis"))
    assert [r.name for r in recs] == ["1"] and recs[0].categories == {1: 1, 2: 8}
    assert len(load_dataset(dict(cfg, keep_empty=True))) == 3
    with pytest.raises(ValueError, match="annotation 102.*category 18 is not in the category map"):
        load_dataset(dict(cfg, category_map={1: 1, 10: 0}))
    with pytest.raises(ValueError, match="unknown category map"):
        load_dataset(dict(cfg, category_map="coco_to_nowhere"))


# ------------------------------------------------------------------------------------------ VOC / Mapillary


def test_pascal_voc_reader(tmp_path):
    root = os.path.join(str(tmp_path), "VOC2012")
    h, w = 10, 12
    obj = np.zeros((h, w), np.uint8)
    cls = np.zeros((h, w), np.uint8)
    obj[1:5, 1:5], cls[1:5, 1:5] = 1, 15  # person
    obj[6:9, 2:10], cls[6:9, 2:10] = 2, 12  # dog
    cls[6, 2] = 15  # a stray pixel of another class: the majority decides
    obj[5, :], cls[5, :] = 255, 255  # void
    obj[1:3, 8:11], cls[1:3, 8:11] = 3, 9  # chair
    io.write_indexed_png(os.path.join(root, "SegmentationObject", "2007_000001.png"), obj)
    io.write_indexed_png(os.path.join(root, "SegmentationClass", "2007_000001.png"), cls)
    _image(os.path.join(root, "JPEGImages", "2007_000001.jpg"), h, w)
    io.write_text(os.path.join(root, "ImageSets/Segmentation/train.txt"), "2007_000001\n")
    recs = load_dataset(dict(format="pascal_voc", root=str(tmp_path), split="train"))
    assert recs[0].categories == {1: 15, 2: 12, 3: 9}
    masks, ignore = _load_all(recs[0])
    np.testing.assert_array_equal(masks[1, 0], obj == 2)
    np.testing.assert_array_equal(ignore[0], obj == 255)
    recs = load_dataset(dict(format="pascal_voc", root=root, split="train", category_map="voc_to_ytvis"))
    assert recs[0].categories == {1: 1, 2: 8}
    masks, ignore = _load_all(recs[0])
    assert not ignore[0][obj == 3].any()  # a dropped instance is background, not ignore


def test_mapillary_reader(tmp_path):
    root = str(tmp_path)
    h, w = 10, 12
    inst = np.zeros((h, w), np.int64)
    inst[:, :] = 13 * 256  # road (label 13 -> id 14): dropped
    inst[1:4, 1:4] = 19 * 256 + 0  # person #0
    inst[1:4, 6:9] = 19 * 256 + 1  # person #1
    inst[6:9, 1:6] = 55 * 256 + 0  # car
    inst[6:9, 7:11] = 54 * 256 + 0  # bus -> ignore
    io.write_uint16_png(os.path.join(root, "training/instances/img1.png"), inst)
    _image(os.path.join(root, "training/images/img1.jpg"), h, w)
    io.write_uint16_png(os.path.join(root, "training/instances/img2.png"), np.full((h, w), 13 * 256))
    _image(os.path.join(root, "training/images/img2.jpg"), h, w)
    recs = load_dataset(dict(format="mapillary", root=root, split="training"))
    assert [r.name for r in recs] == ["img1"]
    r = recs[0]
    assert r.categories == {19 * 256: 2, 19 * 256 + 1: 2, 55 * 256: 1}
    masks, ignore = r.masks.load([0], [55 * 256, 19 * 256 + 1])
    np.testing.assert_array_equal(masks[0, 0], inst == 55 * 256)
    np.testing.assert_array_equal(masks[1, 0], inst == 19 * 256 + 1)
    np.testing.assert_array_equal(ignore[0], inst == 54 * 256)


# ------------------------------------------------------------------------------------------ STEm-Seg JSON


def test_stemseg_json_readers(tmp_path):
    root = str(tmp_path)
    h, w = 8, 10
    for t in range(2):
        _image(os.path.join(root, "seq7", f"{t:06d}.png"), h, w)
    car, ped, ign = _blob(h, w, 0, 4, 0, 5), _blob(h, w, 4, 8, 5, 9), _blob(h, w, 0, 2, 8, 10)
    seq = dict(id="7", height=h, width=w, image_paths=["seq7/000000.png", "seq7/000001.png"],
               categories={"1": 1, "2": 2, "3": 3},
               segmentations=[{"1": _rle_str(car), "3": _rle_str(ign)}, {"1": _rle_str(car), "2": _rle_str(ped)}])
    io.write_json(os.path.join(root, "kitti.json"),
                  dict(meta={"category_labels": {"1": "car", "2": "person", "3": "ignore"}}, sequences=[seq]))
    cfg = dict(format="stemseg_video_json", root=root, annotations="kitti.json", ignore_categories=[3])
    (rec,) = load_dataset(cfg)
    assert rec.categories == {1: 1, 2: 2} and rec.frame_instances == (frozenset({1}), frozenset({1, 2}))
    masks, ignore = _load_all(rec)
    np.testing.assert_array_equal(masks[1, 1], ped)
    np.testing.assert_array_equal(ignore[0], ign)
    seq["segmentations"][1]["4"] = _rle_str(ped)
    io.write_json(os.path.join(root, "bad.json"), dict(meta={"category_labels": {}}, sequences=[seq]))
    with pytest.raises(ValueError, match=r"bad.json \(sequence '7', frame 1 \[000001.png\], instance 4\).*no entry"):
        load_dataset(dict(cfg, annotations="bad.json"))
    images = [dict(height=h, width=w, image_path="seq7/000000.png", categories=[1, 5],
                   segmentations=[_rle_str(car), _rle_str(ped)], ignore=_rle_str(ign))]  # fmt: skip
    io.write_json(os.path.join(root, "img.json"), dict(meta={"category_labels": {}}, images=images))
    icfg = dict(format="stemseg_image_json", root=root, annotations="img.json", category_map={1: 1, 5: 0})
    (rec,) = load_dataset(icfg)
    assert rec.is_image and rec.categories == {1: 1}
    masks, ignore = _load_all(rec)
    np.testing.assert_array_equal(masks[0, 0], car)
    np.testing.assert_array_equal(ignore[0], ign)


# ------------------------------------------------------------------------------------------ categories


def test_category_maps_match_the_spec():
    m = cats.NAMED_MAPS
    assert set(m["coco_to_ytvis"]) == set(cats.COCO_CATEGORIES) and len(cats.COCO_CATEGORIES) == 80
    kept = {cats.COCO_CATEGORIES[s]: t for s, t in m["coco_to_ytvis"].items() if t > 0}
    assert len(kept) == 20
    assert kept["person"] == 1 and kept["bicycle"] == kept["motorcycle"] == 21 and kept["tennis racket"] == 40
    assert all(cats.YTVIS_CATEGORIES[kept[name]].replace("_", " ").startswith(name[:3]) or name in
               ("bicycle", "car", "motorcycle") for name in kept)  # fmt: skip
    assert sum(t > 0 for t in m["coco_to_davis"].values()) == 29
    assert sum(t > 0 for t in m["voc_to_davis"].values()) == 14
    voc = {cats.VOC_CATEGORIES[s]: t for s, t in m["voc_to_ytvis"].items() if t > 0}
    assert voc == {"aeroplane": 28, "boat": 34, "car": 6, "cat": 14, "cow": 15, "dog": 8, "horse": 18,
                   "motorbike": 21, "person": 1, "train": 17}  # fmt: skip
    mp = m["mapillary_to_kitti"]
    assert {cats.MAPILLARY_CATEGORIES[s] for s, t in mp.items() if t == cats.IGNORE} == {
        "Bicyclist", "Motorcyclist", "Other Rider", "Bicycle", "Bus", "Caravan", "Motorcycle", "On Rails",
        "Other Vehicle", "Trailer", "Truck", "Wheeled Slow"}  # fmt: skip
    assert {cats.MAPILLARY_CATEGORIES[s]: t for s, t in mp.items() if t > 0} == {"Person": 2, "Car": 1}
    assert cats.class_agnostic(m["voc_to_ytvis"], ())[15] == 1
    assert common.cfg_get({"a": None}, "a", 3) == 3


def test_own_data_davis_layout_with_categories(tmp_path):
    """The README's "own data" recipe: free frame names, split 'all', categories from a JSON file."""
    from stemseg_jax import config

    root = str(tmp_path)
    h, w = 6, 8
    for name in ("frame_a", "frame_b"):
        _image(os.path.join(root, "JPEGImages/480p/clip_001", f"{name}.jpg"), h, w)
        lab = np.zeros((h, w), np.uint8)
        lab[:3, :4], lab[3:, 4:] = 1, 2
        io.write_indexed_png(os.path.join(root, "Annotations/480p/clip_001", f"{name}.png"), lab)
    io.write_json(os.path.join(root, "categories.json"), {"clip_001": {"1": 2, "2": 1}})
    entry = config.dataset("davis", root, "all", 1.0, annotations="Annotations/480p",
                           instance_categories="categories.json")  # fmt: skip
    (rec,) = load_dataset(entry, "data.datasets.mine")
    assert rec.categories == {1: 2, 2: 1} and rec.frame_paths[1].endswith("frame_b.jpg")
    io.write_json(os.path.join(root, "categories.json"), {"clip_001": {"1": 2}})
    with pytest.raises(ValueError, match="no category for instance 2 of sequence 'clip_001'"):
        load_dataset(entry, "data.datasets.mine")


def test_dataset_options_come_from_the_entry_then_its_format_then_the_global_default():
    from stemseg_jax.data.readers import OPTION_DEFAULTS, dataset_option

    davis_entry = {"format": "davis", "root": "/x", "split": "val"}
    assert dataset_option(davis_entry, "instance_duplication") is True
    assert dataset_option(davis_entry, "background_as_ignore") is True
    assert dataset_option({**davis_entry, "instance_duplication": False}, "instance_duplication") is False
    assert dataset_option({"format": "kitti_mots"}, "split_on_empty_frames") is True
    assert dataset_option({"format": "mapillary"}, "min_instance_area") == 30
    assert dataset_option({"format": "coco"}, "min_instance_area") == OPTION_DEFAULTS["min_instance_area"] == 0
    assert dataset_option({"format": "coco"}, "weight") == 1.0
