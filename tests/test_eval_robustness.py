"""Scoring and ``--check`` on malformed results: an error (scoring) or a reported problem (check), in
milliseconds; never a hang in pycocotools, a crash, or a score computed from a mask of another size."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import random
import re
import time

import numpy as np
import pytest

from stemseg_jax import io
from stemseg_jax.data import synthetic
from stemseg_jax.evaluation import check, davis, kitti_mots, writers, ytvis
from stemseg_jax.evaluation.writers import write_davis_sequence, ytvis_entry
from tests.test_fuzz_parsers import _mutate_json, _mutate_txt

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@contextlib.contextmanager
def no_hang(seconds: float = 30):
    """Ends the test process (with tracebacks) if the body hangs: pycocotools loops in C on such RLEs,
    where no Python-level timeout can interrupt it."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    start = time.perf_counter()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert time.perf_counter() - start < 5


# ------------------------------------------------------------------------------------------ KITTI-MOTS


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    """A 128x256 val sequence 0002 and a perfect result file for it (the GT lines without class 10)."""
    base = tmp_path_factory.mktemp("kitti")
    root = synthetic.generate("kitti_mots", str(base / "gt"), 0, num_train=1, num_val=1, num_frames=3,
                              height=128, width=256, min_objects=2, max_objects=3)["root"]  # fmt: skip
    lines = open(os.path.join(root, "instances_txt", "0002.txt")).read().splitlines()
    results = [line for line in lines if line.split()[2] != "10"]
    return root, str(base / "res"), results


def _write_results(res_dir, lines):
    io.write_text(os.path.join(res_dir, "0002.txt"), "".join(line + "\n" for line in lines))


def _half_size_line(line: str) -> str:
    """The same object written as the RLE of a 64x128 mask under the 128x256 header."""
    frame, obj, cls, h, w, counts = io.parse_mots_line(line, "x")
    mask = io.decode_segmentation(counts, h, w, "x")[::2, ::2]
    return f"{frame} {obj} {cls} {h} {w} {io.encode_rle(mask)['counts']}"


def test_kitti_perfect_results_score(kitti):
    root, res, lines = kitti
    _write_results(res, lines)
    r = kitti_mots.evaluate_kitti_mots(root, res, ["0002"])
    assert r["classes"]["car"]["mots_tools"]["fp"] == 0 and r["classes"]["pedestrian"]["mots_tools"]["fn"] == 0
    assert check.check_kitti_mots(root, res, ["0002"]) == []


def test_kitti_rle_of_a_smaller_mask_is_an_error_not_a_hang(kitti):
    root, res, lines = kitti
    _write_results(res, lines[:1] + [_half_size_line(lines[1])] + lines[2:])
    pattern = r"0002.txt, line 2.*RLE 'counts' covers \d+ pixels but the frame has 128x256"
    with no_hang(), pytest.raises(ValueError, match=pattern):
        kitti_mots.evaluate_kitti_mots(root, res, ["0002"])
    with no_hang():
        problems = check.check_kitti_mots(root, res, ["0002"])
    assert len(problems) == 1 and "0002.txt, line 2" in problems[0] and "covers" in problems[0]


def test_kitti_bad_result_lines(kitti):
    root, res, lines = kitti
    frame, obj, cls, h, w, counts = lines[0].split()
    for bad, pattern in [
        (f"{frame} {obj} {cls} {h} {w} }}}}}}", r"line 1.*'counts'.*outside the encoding's range"),
        (f"{frame} {obj} {cls} {h} {w} {counts}\u00e9", r"line 1.*'counts' string is not ASCII"),
        (f"{frame} {obj} {cls} 64 128 {counts}", r"line 1.*mask size \(64, 128\) differs from \(128, 256\)"),
    ]:
        _write_results(res, [bad] + lines[1:])
        with no_hang(), pytest.raises(ValueError, match=r"0002.txt, " + pattern) as err:
            kitti_mots.evaluate_kitti_mots(root, res, ["0002"])
        assert type(err.value) is ValueError
        assert len(check.check_kitti_mots(root, res, ["0002"])) == 1
    # Non-UTF-8 bytes: the file and the line.
    path = os.path.join(res, "0002.txt")
    with open(path, "wb") as f:
        f.write(("\n".join(lines[:2]) + "\n").encode() + b"\xff\xfe\n")
    with pytest.raises(ValueError, match=r"0002.txt, line 3: not UTF-8") as err:
        kitti_mots.evaluate_kitti_mots(root, res, ["0002"])
    assert type(err.value) is ValueError
    assert "line 3: not UTF-8" in check.check_kitti_mots(root, res, ["0002"])[0]


def test_kitti_bad_ground_truth_rle_is_an_error(kitti, tmp_path):
    root, res, lines = kitti
    _write_results(res, lines)
    gt = str(tmp_path / "gt")
    gt_lines = open(os.path.join(root, "instances_txt", "0002.txt")).read().splitlines()
    io.write_text(os.path.join(gt, "instances_txt", "0002.txt"),
                  "\n".join([_half_size_line(gt_lines[0])] + gt_lines[1:]) + "\n")  # fmt: skip
    with no_hang(), pytest.raises(ValueError, match=r"instances_txt/0002.txt, line 1.*covers"):
        kitti_mots.evaluate_kitti_mots(gt, res, ["0002"])


def test_kitti_writers_check_rles(kitti, tmp_path):
    _, _, lines = kitti
    bad = _half_size_line(lines[1])
    with no_hang(), pytest.raises(ValueError, match=r"0002.txt, line 2: RLE 'counts' covers \d+ pixels"):
        writers.kitti_mots_postprocess(lines[:1] + [bad], where="0002.txt")
    frame, obj, cls, h, w, counts = bad.split()
    rle = {"size": [int(h), int(w)], "counts": counts}
    with no_hang(), pytest.raises(ValueError, match=r"0001.txt, frame 0: RLE 'counts' covers"):
        writers.write_kitti_mots_sequence(str(tmp_path), 1, [(0, 1, 1, rle), (0, 2, 1, rle)])
    with pytest.raises(ValueError, match=r"0001.txt, frame 0: RLE 'size' must be a list"):
        writers.write_kitti_mots_sequence(str(tmp_path), 1, [(0, 1, 1, {"size": "128x256", "counts": counts})])


# ------------------------------------------------------------------------------------------ YouTube-VIS


@pytest.fixture(scope="module")
def ytvis_split(tmp_path_factory):
    """A valid split's GT (2 videos of 3 frames, 32x48) and perfect results for it."""
    summary = synthetic.generate("ytvis", str(tmp_path_factory.mktemp("ytvis")), 0, num_train=1, num_val=2,
                                 num_frames=3, height=32, width=48)  # fmt: skip
    gt = json.load(open(summary["val_gt"]))
    sizes = {v["id"]: (v["height"], v["width"]) for v in gt["videos"]}
    results = []
    for a in gt["annotations"]:
        h, w = sizes[a["video_id"]]
        masks = np.stack([io.decode_segmentation(s, h, w, "gt") if s else np.zeros((h, w), bool)
                          for s in a["segmentations"]])  # fmt: skip
        results.append(ytvis_entry(a["video_id"], a["category_id"], 1.0, masks))
    return summary["val_gt"], results


def _with_frame(results, rle, k=0, t=1):
    out = json.loads(json.dumps(results))
    out[k]["segmentations"][t] = rle
    return out


def _resized_rle(results, h_factor: float, k=0, t=1) -> dict:
    """Result ``k``'s frame ``t`` encoded at another height, with the correct ``size`` kept."""
    seg = results[k]["segmentations"][t]
    h, w = seg["size"]
    m = io.decode_segmentation(seg, h, w, "r")
    rows = np.clip((np.arange(int(h * h_factor)) / h_factor).astype(int), 0, h - 1)
    return {"size": [h, w], "counts": io.encode_rle(m[rows])["counts"]}


def test_ytvis_perfect_results_score_one(ytvis_split):
    gt, results = ytvis_split
    assert ytvis.evaluate_ytvis(gt, results)["stats"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert check.check_ytvis(gt, results) == []


def test_ytvis_rle_covering_more_pixels_than_the_frame_is_an_error_not_a_hang(ytvis_split):
    gt, results = ytvis_split
    bad = _with_frame(results, _resized_rle(results, 2.0))
    with no_hang(), pytest.raises(ValueError, match=r"<results>: result 0 \(video \d+\), frame 1: RLE 'counts' "
                                                    r"covers 3072 pixels but the frame has 32x48=1536"):
        ytvis.evaluate_ytvis(gt, bad)
    with no_hang():
        problems = check.check_ytvis(gt, bad)
    assert len(problems) == 1 and "result 0 (video" in problems[0]
    assert "frame 1: RLE 'counts' covers 3072" in problems[0]


def test_ytvis_rle_of_a_smaller_mask_with_the_right_size_is_caught(ytvis_split, tmp_path):
    gt, results = ytvis_split
    bad = _with_frame(results, _resized_rle(results, 0.5))
    path = str(tmp_path / "results.json")
    io.write_json(path, bad)
    problems = check.check_ytvis(gt, path)
    assert len(problems) == 1 and "results.json: result 0" in problems[0] and "covers 768 pixels" in problems[0]
    with no_hang(), pytest.raises(ValueError, match=r"results.json: result 0 .*frame 1: RLE 'counts' covers 768"):
        ytvis.evaluate_ytvis(gt, path)


@pytest.mark.parametrize("field, value, pattern", [
    ("video_id", "abc", r"'video_id' must be an integer, got 'abc'"),
    ("video_id", 1.5, r"'video_id' must be an integer, got 1.5"),
    ("category_id", "1", r"'category_id' must be an integer, got '1'"),
    ("score", "high", r"'score' must be a finite number, got 'high'"),
    ("score", float("nan"), r"'score' must be a finite number, got nan"),
    ("segmentations", None, r"'segmentations' must be a list \(one RLE or null per frame\), got None"),
    ("segmentations", "abc", r"'segmentations' must be a list"),
])  # fmt: skip
def test_ytvis_bad_result_fields_are_reported_and_errors(ytvis_split, field, value, pattern):
    gt, results = ytvis_split
    bad = json.loads(json.dumps(results))
    bad[1][field] = value
    problems = check.check_ytvis(gt, bad)
    assert len(problems) == 1 and problems[0].startswith("<results>: result 1")
    assert re.search(pattern, problems[0]), problems[0]
    with pytest.raises(ValueError, match=r"<results>: result 1.*" + pattern) as err:
        ytvis.evaluate_ytvis(gt, bad)
    assert type(err.value) is ValueError


@pytest.mark.parametrize("rle, pattern", [
    ({"size": 32, "counts": "abc"}, r"'size' must be a list of two non-negative integers, got 32"),
    ({"size": [32, 48], "counts": 5}, r"'counts' must be a string or a list"),
    ({"size": [32, 48], "counts": "}}}"}, r"outside the encoding's range"),
    ({"size": [16, 48], "counts": "abc"}, r"mask size \[16, 48\] differs from the video's \[32, 48\]"),
    ("abc", r"not an RLE dict"),
])  # fmt: skip
def test_ytvis_malformed_result_rles(ytvis_split, rle, pattern):
    gt, results = ytvis_split
    bad = _with_frame(results, rle)
    problems = check.check_ytvis(gt, bad)
    assert len(problems) == 1 and "result 0 (video" in problems[0] and "frame 1: " in problems[0]
    with no_hang(), pytest.raises(ValueError, match=r"result 0 \(video \d+\), frame 1: .*" + pattern):
        ytvis.evaluate_ytvis(gt, bad)


def test_ytvis_results_not_json_or_not_utf8(ytvis_split, tmp_path):
    gt, results = ytvis_split
    path = str(tmp_path / "results.json")
    with open(path, "wb") as f:
        f.write(json.dumps(results).encode()[:30] + b"\xff" + json.dumps(results).encode()[30:])
    assert len(check.check_ytvis(gt, path)) == 1 and "not UTF-8" in check.check_ytvis(gt, path)[0]
    with pytest.raises(ValueError, match=r"results.json \(line 1\): not UTF-8") as err:
        ytvis.evaluate_ytvis(gt, path)
    assert type(err.value) is ValueError
    assert check.check_ytvis(gt, [1, 2]) == ["<results>: result 0: not a JSON object", "<results>: result 1: "
                                             "not a JSON object"]  # fmt: skip


def test_ytvis_bad_ground_truth_rle_is_an_error(ytvis_split, tmp_path):
    gt_path, results = ytvis_split
    gt = json.load(open(gt_path))
    a, t = next((a, t) for a in gt["annotations"] for t, s in enumerate(a["segmentations"]) if isinstance(s, dict))
    seg = a["segmentations"][t]
    a["segmentations"][t] = {"size": seg["size"], "counts": seg["counts"] + [5]}
    bad = str(tmp_path / "gt.json")
    io.write_json(bad, gt)
    pattern = rf"gt.json: annotation {a['id']} \(video \d+\), frame {t}: uncompressed RLE covers 1541 pixels"
    with no_hang(), pytest.raises(ValueError, match=pattern):
        ytvis.evaluate_ytvis(bad, results)
    a["video_id"] = "abc"
    io.write_json(bad, gt)
    with pytest.raises(ValueError, match=rf"gt.json: annotation {a['id']}: 'video_id' must be an integer, got 'abc'"):
        ytvis.evaluate_ytvis(bad, results)


# ------------------------------------------------------------------------------------------ fuzz


def _classify(fn, path, counts):
    try:
        fn()
        counts["ok"] += 1
    except Exception as err:  # noqa: BLE001 (classifying every exception is the point)
        if type(err) in (ValueError, FileNotFoundError) and path in str(err):
            counts["clean"] += 1
        else:
            counts["bare"].append(f"{type(err).__name__}: {str(err)[:200]}")


def test_fuzz_results_score_or_fail_cleanly_and_check_never_crashes(kitti, ytvis_split, tmp_path):
    """Mutated result files (seeded) through scoring and --check: a project error naming the file, never a
    library exception or a hang."""
    rng = random.Random(0)
    counts: dict = {"ok": 0, "clean": 0, "bare": []}
    root, res, lines = kitti
    _write_results(res, lines)
    path = os.path.join(res, "0002.txt")
    original = ("\n".join(lines) + "\n").encode()
    with no_hang(60):
        for _ in range(100):
            with open(path, "wb") as f:
                f.write(_mutate_txt(original, rng))
            _classify(lambda: kitti_mots.evaluate_kitti_mots(root, res, ["0002"]), path, counts)
            _classify(lambda: check.check_kitti_mots(root, res, ["0002"]), path, counts)
        gt, results = ytvis_split
        path = str(tmp_path / "results.json")
        for _ in range(100):
            mutated = _mutate_json({"results": results}, rng)
            try:  # the mutated list itself, where the mutation left the wrapper intact
                mutated = json.dumps(json.loads(mutated)["results"]).encode()
            except (ValueError, KeyError, TypeError):
                pass
            with open(path, "wb") as f:
                f.write(mutated)
            _classify(lambda: ytvis.evaluate_ytvis(gt, path), path, counts)
            _classify(lambda: check.check_ytvis(gt, path), path, counts)
    assert counts["clean"] > 100  # scoring rejected most mutations (--check reports them, so counts "ok")
    assert counts["bare"] == [], f"{len(counts['bare'])} bare exceptions, e.g. {counts['bare'][:5]}"
    _write_results(res, lines)


# ------------------------------------------------------------------------------------------ DAVIS


@pytest.fixture
def davis_split(tmp_path):
    summary = synthetic.generate("davis", str(tmp_path / "gt"), 0, num_train=1, num_val=1, num_frames=3,
                                 height=32, width=48)  # fmt: skip
    root = summary["root"]
    res = str(tmp_path / "res")
    for seq in summary["splits"]["val"]:
        names, maps = davis.load_gt_sequence(root, seq)
        write_davis_sequence(res, seq, names, np.where(maps == 255, 0, maps))
    return root, res, summary["splits"]["val"][0]


def _truncate(path):
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])


def test_davis_truncated_result_png_is_reported_and_an_error(davis_split):
    root, res, seq = davis_split
    assert check.check_davis(root, res) == []
    png = os.path.join(res, seq, "00001.png")
    _truncate(png)
    problems = check.check_davis(root, res)
    assert len(problems) == 1 and problems[0].startswith(png + ": cannot decode PNG") and "frame 00001" in problems[0]
    with pytest.raises(ValueError, match=r"00001.png: cannot decode PNG") as err:
        davis.evaluate_davis(root, res)
    assert type(err.value) is ValueError


def test_davis_unreadable_ground_truth_png_is_reported(davis_split):
    root, res, seq = davis_split
    png = os.path.join(root, "Annotations_unsupervised", "480p", seq, "00000.png")
    raw = open(png, "rb").read()
    with open(png, "wb") as f:
        f.write(raw[:20])  # the header cut: not even the frame size can be read
    problems = check.check_davis(root, res)
    assert problems == [f"{png}: cannot read the PNG header (corrupt?) of sequence {seq}"] or (
        len(problems) == 1 and problems[0].startswith(png + ": cannot")), problems
