"""Readers and mask decoding on malformed input: only project errors, never a library exception.

A project error is a ``ValueError`` (``FileNotFoundError`` for a missing file) of exactly that type whose
message names the file, and the record (video / frame / line) and field where there is one. The fuzz tests
mutate real-format files written by the synthetic generator (seeded) and run each one through
``load_dataset`` and the decoding of every mask; the named cases below are the ones issue 24 found.
"""

from __future__ import annotations

import json
import os
import random
import time

import numpy as np
import pytest

from stemseg_jax import io
from stemseg_jax.data import load_dataset, synthetic

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 16, 24
N_MUTATIONS = 300  # per format
# 16 values that are wrong for almost every field of a YouTube-VIS JSON (a few are right for some).
BAD_VALUES = [None, True, False, -1, 0, 1, 10**6, 2**70, 1.5, float("nan"), "1", "abc", "", [], [-1, "x"], {}]
BAD_TOKENS = [b"-1", b"0", b"1", b"nan", b"abc", b"", b"99999999999999999999", b"1.5", b"3", b"10", b"\xff\xfe",
              b"8", b"12", b"2001", b"0x10", "\u00ff".encode()]  # fmt: skip


@pytest.fixture(scope="module")
def ytvis_root(tmp_path_factory):
    return synthetic.generate("ytvis", str(tmp_path_factory.mktemp("ytvis")), 3, num_train=2, num_val=1,
                              num_frames=3, height=H, width=W)["root"]  # fmt: skip


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory):
    return synthetic.generate("kitti_mots", str(tmp_path_factory.mktemp("kitti")), 3, num_train=1, num_val=1,
                              num_frames=3, height=H, width=W, min_objects=3, max_objects=4)["root"]  # fmt: skip


def _load_all(cfg):
    for rec in load_dataset(cfg):
        rec.masks.load(list(range(rec.num_frames)), list(rec.instance_ids))


def outcome(cfg, path: str) -> str:
    """"ok", "clean" (a project error naming ``path``) or "bare <type>: <message>"."""
    try:
        _load_all(cfg)
        return "ok"
    except Exception as err:  # noqa: BLE001 (classifying every exception is the point)
        if type(err) in (ValueError, FileNotFoundError) and path in str(err):
            return "clean"
        return f"bare {type(err).__name__}: {str(err)[:200]}"


# ------------------------------------------------------------------------------------------ mutations


def _paths(obj, prefix=(), first_only=False):
    """Every (key / index) path of a JSON tree; ``first_only`` takes only the first element of each list."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,), first_only)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:1] if first_only else obj):
            out += _paths(v, prefix + (i,), first_only)
    return out


def _set(obj, path, value):
    for key in path[:-1]:
        obj = obj[key]
    if value is _DELETE:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


_DELETE = object()


def _mutate_json(data: dict, rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.15:  # raw bytes: a flipped byte or non-UTF-8 bytes in the serialised file
        raw = bytearray(json.dumps(data).encode())
        pos = rng.randrange(len(raw))
        if rng.random() < 0.5:
            raw[pos] = rng.randrange(256)
        else:
            raw[pos:pos] = b"\xff\xfe"
        return bytes(raw)
    data = json.loads(json.dumps(data))
    path = rng.choice(_paths(data))
    if kind < 0.3 and isinstance(path[-1], str):
        _set(data, path, _DELETE)
    elif kind < 0.4:  # a list element repeated (duplicate ids, too many frames)
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, list):
            parent.insert(path[-1], json.loads(json.dumps(parent[path[-1]])))
        else:
            _set(data, path, rng.choice(BAD_VALUES))
    else:
        _set(data, path, rng.choice(BAD_VALUES))
    return json.dumps(data).encode()


def _mutate_txt(raw: bytes, rng: random.Random) -> bytes:
    lines = raw.split(b"\n")
    filled = [i for i, line in enumerate(lines) if line.strip()]
    i = rng.choice(filled)
    fields = lines[i].split(b" ")
    kind = rng.randrange(9)
    if kind == 0:  # one field replaced by a bad token
        fields[rng.randrange(len(fields))] = rng.choice(BAD_TOKENS)
    elif kind == 1:  # one character of the RLE counts changed
        c = bytearray(fields[-1])
        c[rng.randrange(len(c))] = rng.randrange(33, 127)
        fields[-1] = bytes(c)
    elif kind == 2:  # counts truncated
        fields[-1] = fields[-1][: rng.randrange(len(fields[-1]))]
    elif kind == 3:  # another line's counts, or the size of a smaller mask
        if rng.random() < 0.5:
            fields[-1] = lines[rng.choice(filled)].split(b" ")[-1]
        else:
            fields[3:5] = [b"8", b"12"]
    elif kind == 4:  # a field dropped or added
        if rng.random() < 0.5:
            del fields[rng.randrange(len(fields))]
        else:
            fields.insert(rng.randrange(len(fields)), b"7")
    elif kind == 5:  # a line repeated
        lines.insert(i, lines[i])
    elif kind == 6:  # a random byte anywhere
        raw = bytearray(raw)
        raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    elif kind == 7:  # a garbage line
        lines.insert(i, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30))))
    else:  # a bare counts string of another mask
        fields[-1] = io.encode_rle(np.ones((H // 2, W), bool))["counts"].encode()
    if kind not in (5, 7):
        lines[i] = b" ".join(fields)
    return b"\n".join(lines)


def _run_mutations(path: str, entry: dict, mutants) -> dict:
    """Writes each ``(label, content)`` of ``mutants(original bytes)`` to ``path``, loads ``entry`` and tallies the
    outcomes (bare exceptions listed with their label); ``path`` gets its original content back at the end."""
    with open(path, "rb") as f:
        original = f.read()
    counts: dict = {"ok": 0, "clean": 0, "bare": [], "cases": 0}
    try:
        for label, content in mutants(original):
            with open(path, "wb") as f:
                f.write(content)
            out = outcome(entry, path)
            counts["cases"] += 1
            if out.startswith("bare"):
                counts["bare"].append(f"{label}{out}")
            else:
                counts[out] += 1
    finally:
        with open(path, "wb") as f:
            f.write(original)
    return counts


def run_ytvis_fuzz(root: str, n: int, seed: int = 0) -> dict:
    rng = random.Random(seed)

    def mutants(original):
        data = json.loads(original)
        return (("", _mutate_json(data, rng)) for _ in range(n))

    return _run_mutations(os.path.join(root, "train.json"), dict(format="ytvis", root=root, split="train"), mutants)


def run_ytvis_sweep(root: str) -> dict:
    """Every key of the first video, annotation, segmentation and category (and the top level) x BAD_VALUES."""

    def mutants(original):
        for key_path in _paths(json.loads(original), first_only=True):
            if key_path[0] == "info":
                continue
            for value in BAD_VALUES:
                mutated = json.loads(original)
                _set(mutated, key_path, value)
                yield f"{key_path}={value!r}: ", json.dumps(mutated, separators=(",", ":")).encode()

    return _run_mutations(os.path.join(root, "train.json"), dict(format="ytvis", root=root, split="train"), mutants)


def run_kitti_fuzz(root: str, n: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    return _run_mutations(os.path.join(root, "instances_txt", "0002.txt"),
                          dict(format="kitti_mots", root=root, split="val"),
                          lambda original: (("", _mutate_txt(original, rng)) for _ in range(n)))


def test_fuzz_kitti_mots_txt_gives_only_project_errors(kitti_root):
    start = time.perf_counter()
    counts = run_kitti_fuzz(kitti_root, N_MUTATIONS)
    assert counts["bare"] == [], f"{len(counts['bare'])} bare exceptions, e.g. {counts['bare'][:5]}"
    assert counts["clean"] > N_MUTATIONS // 2  # the mutations do hit the parser
    assert time.perf_counter() - start < 20


def test_fuzz_ytvis_json_gives_only_project_errors(ytvis_root):
    start = time.perf_counter()
    counts = run_ytvis_fuzz(ytvis_root, N_MUTATIONS)
    assert counts["bare"] == [], f"{len(counts['bare'])} bare exceptions, e.g. {counts['bare'][:5]}"
    assert counts["clean"] > N_MUTATIONS // 2
    assert time.perf_counter() - start < 20


def test_sweep_every_ytvis_key_with_bad_values(ytvis_root):
    counts = run_ytvis_sweep(ytvis_root)
    assert counts["bare"] == [], f"{len(counts['bare'])} of {counts['cases']}, e.g. {counts['bare'][:5]}"


# ------------------------------------------------------------------------------------------ named cases


def _ytvis_case(root, mutate, split="train"):
    """Writes ``mutate(original train.json data)`` and returns (cfg, path); the fixture restores the file."""
    path = os.path.join(root, "train.json")
    data = json.load(open(os.path.join(root, "train_original.json")))
    mutate(data)
    io.write_json(path, data)
    return dict(format="ytvis", root=root, split=split), path


@pytest.fixture
def ytvis(ytvis_root):
    path = os.path.join(ytvis_root, "train.json")
    original = open(path, "rb").read()
    with open(os.path.join(ytvis_root, "train_original.json"), "wb") as f:
        f.write(original)
    yield ytvis_root
    with open(path, "wb") as f:
        f.write(original)


def _first_rle_annotation(data):
    return next(a for a in data["annotations"] if isinstance(a["segmentations"][0], dict))


def test_non_utf8_files_name_the_file(ytvis, kitti_root):
    path = os.path.join(ytvis, "train.json")
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[:40] + b"\xff" + raw[40:])
    with pytest.raises(ValueError, match=r"train.json.*not UTF-8") as err:
        load_dataset(dict(format="ytvis", root=ytvis, split="train"))
    assert type(err.value) is ValueError
    txt = os.path.join(kitti_root, "instances_txt", "0002.txt")
    good = open(txt, "rb").read()
    try:
        lines = good.split(b"\n")
        lines[2] = lines[2] + b"\xe9"
        with open(txt, "wb") as f:
            f.write(b"\n".join(lines))
        with pytest.raises(ValueError, match=r"0002.txt:3: not UTF-8") as err:
            load_dataset(dict(format="kitti_mots", root=kitti_root, split="val"))
        assert type(err.value) is ValueError
    finally:
        with open(txt, "wb") as f:
            f.write(good)


@pytest.mark.parametrize("field, value, pattern", [
    ("size", 5, r"frame 0.*'size' must be a list of two non-negative integers, got 5"),
    ("size", [16.0, "24"], r"frame 0.*'size' must be a list of two non-negative integers"),
    ("counts", [3, "x", 4], r"frame 0.*'counts' list must hold non-negative integers"),
    ("counts", [-5, 389], r"frame 0.*'counts' list must hold non-negative integers"),
    ("counts", 17, r"frame 0.*'counts' must be a string or a list"),
    ("counts", "\u00e9\u00e9", r"frame 0.*'counts' string is not ASCII"),
    ("counts", "}}}", r"frame 0.*'counts'.*outside the encoding's range"),
])  # fmt: skip
def test_ytvis_malformed_rle_names_file_video_frame_and_field(ytvis, field, value, pattern):
    cfg, path = _ytvis_case(ytvis, lambda d: _first_rle_annotation(d)["segmentations"][0].__setitem__(field, value))
    with pytest.raises(ValueError, match=r"train.json.*sequence '\d+'.*" + pattern) as err:
        _load_all(cfg)
    assert type(err.value) is ValueError


def test_kitti_bad_counts_name_the_line(kitti_root):
    txt = os.path.join(kitti_root, "instances_txt", "0002.txt")
    good = open(txt).read()
    lines = good.splitlines()
    cfg = dict(format="kitti_mots", root=kitti_root, split="val")
    try:
        for bad, pattern in [("}}}", "outside the encoding's range"), ("\u00e9", "not ASCII"),
                             (io.encode_rle(np.ones((8, 12), bool))["counts"], f"covers 96 pixels.*{H}x{W}")]:
            io.write_text(txt, "\n".join(lines[:1] + [lines[1].rsplit(" ", 1)[0] + " " + bad] + lines[2:]) + "\n")
            with pytest.raises(ValueError, match=r"0002.txt:2: RLE 'counts'.*" + pattern) as err:
                load_dataset(cfg)
            assert type(err.value) is ValueError
    finally:
        io.write_text(txt, good)


def test_ytvis_video_fields(ytvis):
    cfg, _ = _ytvis_case(ytvis, lambda d: d["videos"][0].__setitem__("file_names", []))
    with pytest.raises(ValueError, match=r"train.json: videos\[0\] \(id 1\): 'file_names' must be a non-empty list"):
        load_dataset(cfg)
    cfg, _ = _ytvis_case(ytvis, lambda d: d["videos"][1].__setitem__("height", float("nan")))
    with pytest.raises(ValueError, match=r"train.json: videos\[1\] \(id 2\): 'height' must be an integer.*nan"):
        load_dataset(cfg)
    cfg, _ = _ytvis_case(ytvis, lambda d: d["videos"][1].__setitem__("id", 1))
    with pytest.raises(ValueError, match=r"train.json: videos\[1\]: video id 1 appears twice"):
        load_dataset(cfg)


@pytest.mark.parametrize("value, pattern", [
    ("1", r"'category_id' must be an integer >= 1, got '1'"),
    (_DELETE, r"has no 'category_id'"),
    (True, r"'category_id' must be an integer >= 1, got True"),
    (0, r"'category_id' must be an integer >= 1, got 0"),
])  # fmt: skip
def test_ytvis_category_id_must_be_an_integer(ytvis, value, pattern):
    cfg, _ = _ytvis_case(ytvis, lambda d: _set(d, ("annotations", 0, "category_id"), value))
    with pytest.raises(ValueError, match=r"train.json \(video 1, annotation 1\): " + pattern):
        load_dataset(cfg)


@pytest.mark.parametrize("value", [2, "yes", 1.0, [1], None])
def test_ytvis_iscrowd_must_be_a_bool_or_0_1(ytvis, value):
    cfg, _ = _ytvis_case(ytvis, lambda d: d["annotations"][0].__setitem__("iscrowd", value))
    with pytest.raises(ValueError, match=r"train.json \(video 1, annotation 1\): 'iscrowd' must be"):
        load_dataset(cfg)


def test_ytvis_iscrowd_valid_values(ytvis):
    for value in (True, False, 0, 1):
        cfg, _ = _ytvis_case(ytvis, lambda d, v=value: d["annotations"][0].__setitem__("iscrowd", v))
        rec = load_dataset(cfg)[0]
        assert (1 in rec.categories) is (not value)


def test_ytvis_train_split_needs_annotations(ytvis):
    cfg, path = _ytvis_case(ytvis, lambda d: d.pop("annotations"))
    with pytest.raises(ValueError, match=r"train.json has no 'annotations'.*split 'train'"):
        load_dataset(cfg)
    # A valid / test split without annotations stays an unannotated record (inference).
    recs = load_dataset(dict(format="ytvis", root=ytvis, split="valid"))
    assert recs and all(r.categories == {} for r in recs)


def test_ytvis_segmentations_must_be_a_list(ytvis):
    # A string of the video's length iterated as per-frame segmentations: silently wrong before.
    cfg, _ = _ytvis_case(ytvis, lambda d: d["annotations"][0].__setitem__("segmentations", "abc"))
    with pytest.raises(ValueError, match=r"annotation 1\): 'segmentations' must be a list"):
        load_dataset(cfg)


def test_davis_wrong_size_mask_names_its_own_sequence(tmp_path):
    root = synthetic.generate("davis", str(tmp_path), 0, num_train=2, num_val=1, num_frames=3, height=H,
                              width=W)["root"]  # fmt: skip
    ann = os.path.join(root, "Annotations_unsupervised", "480p")
    png = os.path.join(ann, "train000", "00001.png")
    io.write_indexed_png(png, np.zeros((H + 2, W), np.uint8))
    recs = {r.name: r for r in load_dataset(dict(format="davis", root=root, split="train"))}
    rec = recs["train000"]
    with pytest.raises(ValueError, match=r"00001.png \(.*train000, sequence 'train000', frame 1\)") as err:
        rec.masks.load([1], list(rec.instance_ids))
    assert os.path.join(ann, "train001") not in str(err.value)


@pytest.mark.parametrize("field, value, pattern", [
    ("category_id", _DELETE, r"has no 'category_id'"),
    ("category_id", "1", r"'category_id' must be an integer >= 1, got '1'"),
    ("iscrowd", 2, r"'iscrowd' must be true, false, 0 or 1, got 2"),
    ("iscrowd", "no", r"'iscrowd' must be true, false, 0 or 1, got 'no'"),
    ("area", "big", r"'area' must be a finite number"),
])  # fmt: skip
def test_coco_annotation_fields(tmp_path, field, value, pattern):
    root = synthetic.generate("coco", str(tmp_path), 0, num_train=2, num_val=1, height=H, width=W)["root"]
    path = os.path.join(root, "annotations", "instances_train2017.json")
    data = json.load(open(path))
    _set(data, ("annotations", 0, field), value)
    io.write_json(path, data)
    a = data["annotations"][0]
    with pytest.raises(ValueError, match=rf"instances_train2017.json \(image {a['image_id']}, annotation {a['id']}\): "
                                         + pattern):  # fmt: skip
        load_dataset(dict(format="coco", root=root, split="train2017"))
