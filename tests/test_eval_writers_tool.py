"""Writers (DAVIS PNGs, KITTI-MOTS txt and post-processing), the --check validators and tools/evaluate.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from stemseg_jax import io
from stemseg_jax.evaluation import check, writers
from stemseg_jax.io import voc_palette, write_indexed_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def box(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_davis_writer_indexed_png_with_voc_palette(tmp_path):
    maps = np.zeros((2, 6, 8), np.uint8)
    maps[0, 1:3, 1:3] = 1
    maps[1, 2:5, 4:8] = 20
    paths = writers.write_davis_sequence(str(tmp_path), "bear", ["00000", "00005.png"], maps)
    assert [os.path.basename(p) for p in paths] == ["00000.png", "00005.png"]
    with Image.open(paths[1]) as im:
        assert im.mode == "P"
        assert np.array_equal(np.array(im), maps[1])
        pal = np.array(im.getpalette()[:9]).reshape(3, 3)
    assert pal.tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert voc_palette()[255].tolist() == [224, 224, 192]  # DAVIS' void colour
    assert not [n for n in os.listdir(tmp_path / "bear") if n.startswith(".tmp")]


def test_kitti_writer_lines_and_errors(tmp_path):
    h, w = 10, 12
    a, b = box(h, w, 0, 0, 4, 4), box(h, w, 5, 5, 9, 9)
    path = writers.write_kitti_mots_sequence(str(tmp_path), 2, [(1, 7, 2, b), (0, 3, 1, a), (1, 3, 1, a)])
    assert os.path.basename(path) == "0002.txt"
    lines = open(path).read().splitlines()
    assert [ln.split()[:5] for ln in lines] == [["0", "1003", "1", "10", "12"], ["1", "2007", "2", "10", "12"],
                                                ["1", "1003", "1", "10", "12"]]
    rle = {"size": [h, w], "counts": lines[1].split()[5].encode()}
    assert np.array_equal(mask_utils.decode(rle).astype(bool), b)
    with pytest.raises(ValueError, match=r"0002.txt, frame 4: masks 0 and 1 overlap"):
        writers.write_kitti_mots_sequence(str(tmp_path), "0002", [(4, 1, 1, a), (4, 2, 1, a | b)])
    with pytest.raises(ValueError, match=r"frame 0: class 3"):
        writers.write_kitti_mots_sequence(str(tmp_path), 2, [(0, 1, 3, a)])
    with pytest.raises(ValueError, match="same object id"):
        writers.write_kitti_mots_sequence(str(tmp_path), 2, [(0, 1, 1, a), (0, 1, 1, b)])
    assert open(path).read().splitlines() == lines  # failed writes left the previous file intact
    assert open(writers.write_kitti_mots_sequence(str(tmp_path), 5, [])).read() == ""


def test_kitti_postprocess_filters_in_official_order(tmp_path):
    h, w = 60, 60
    big = box(h, w, 0, 0, 15, 15)  # 225 px: enough for a car (>= 150)
    sparse = np.zeros((h, w), bool)
    sparse[0:20:2, 20:40] = True  # 200 px, fill ratio 200 / 380 = 0.53 > 0.35
    ped = box(h, w, 20, 0, 37, 15)  # 255 px >= 250
    small_ped = box(h, w, 40, 0, 55, 15)  # 225 px < 250
    ell = box(h, w, 30, 30, 60, 33) | box(h, w, 57, 30, 60, 60)  # 171 px, fill 171 / 900 <= 0.35
    dets = [(f, 1, 1, big) for f in range(3)]  # car, 3 detections: kept
    dets += [(f, 2, 1, sparse) for f in (0, 2, 4, 6)]  # 3 gaps / 4 detections > 0.3: dropped
    dets += [(f, 3, 2, ped) for f in range(9)]  # pedestrian with 9 < 10 detections: dropped
    dets += [(f, 4, 2, small_ped) for f in range(12)]  # area below the pedestrian minimum: dropped
    dets += [(f, 5, 1, ell) for f in range(4)]  # fill ratio too low: dropped
    lines = [io.format_mots_line(f, c * 1000 + t, c, io.encode_rle(m)) for f, t, c, m in dets]
    kept = writers.kitti_mots_postprocess(lines)
    assert sorted({int(ln.split()[1]) for ln in kept}) == [1001]
    loose = writers.kitti_mots_postprocess(lines, {"min_track_length": {2: 9}, "max_time_break_ratio": {1: 0.75},
                                                   "min_area": {2: 225}, "min_area_ratio": {1: 0.18}})
    assert sorted({int(ln.split()[1]) for ln in loose}) == [1001, 1002, 1005, 2003, 2004]
    # Areas scaled for smaller frames: 250 * 0.9 = 225 keeps the small pedestrian; 150 * 1.6 = 240 drops the car.
    assert sorted({int(ln.split()[1]) for ln in writers.kitti_mots_postprocess(lines, area_scale=0.9)}) == [1001, 2004]
    assert writers.kitti_mots_postprocess(lines, area_scale=1.6) == []
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "0003.txt").write_text("\n".join(lines) + "\n")
    out = writers.postprocess_kitti_mots_dir(str(tmp_path / "results"))
    assert out.endswith("results_nms")
    assert sorted(open(os.path.join(out, "0003.txt")).read().splitlines()) == sorted(kept)
    scaled = writers.postprocess_kitti_mots_dir(str(tmp_path / "results"), str(tmp_path / "scaled"), area_scale=0.9)
    assert {int(ln.split()[1]) for ln in open(os.path.join(scaled, "0003.txt"))} == {1001, 2004}


def make_davis(root, frames=3, h=20, w=24):
    os.makedirs(os.path.join(root, "ImageSets", "2017"), exist_ok=True)
    with open(os.path.join(root, "ImageSets", "2017", "val.txt"), "w") as fh:
        fh.write("s1\n")
    maps = np.zeros((frames, h, w), np.uint8)
    maps[:, 2:8, 2:8] = 1
    for t in range(frames):
        write_indexed_png(os.path.join(root, "Annotations_unsupervised", "480p", "s1", f"{t:05d}.png"), maps[t])
    return maps


def test_checkers_report_named_problems(tmp_path):
    maps = make_davis(str(tmp_path / "gt"))
    res = str(tmp_path / "res")
    writers.write_davis_sequence(res, "s1", ["00000", "00001", "00002"], maps)
    assert check.check_davis(str(tmp_path / "gt"), res) == []
    os.remove(os.path.join(res, "s1", "00002.png"))
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(os.path.join(res, "s1", "00001.png"))
    problems = check.check_davis(str(tmp_path / "gt"), res)
    assert any("00002.png: missing result frame 00002" in p for p in problems)
    assert any("00001.png: PNG mode RGB" in p for p in problems)
    # frames only (a test-dev split): names and size come from JPEGImages
    jpg = tmp_path / "gt" / "JPEGImages" / "480p" / "s2"
    jpg.mkdir(parents=True)
    for t in range(2):
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(jpg / f"{t:05d}.jpg")
    writers.write_davis_sequence(res, "s2", ["00000"], maps[:1])
    assert check.check_davis(str(tmp_path / "gt"), res, sequences=["s2"]) == [
        os.path.join(res, "s2", "00001.png") + ": missing result frame 00001"]

    gt = {"videos": [{"id": 4, "height": 5, "width": 6, "length": 2}], "categories": [{"id": 1}]}
    good = {"video_id": 4, "category_id": 1, "score": 0.5,
            "segmentations": [io.encode_rle(np.ones((5, 6), bool)), None]}
    assert check.check_ytvis(gt, [good]) == []
    bad = [dict(good, video_id=9), dict(good, category_id=2),
           dict(good, segmentations=[io.encode_rle(np.ones((5, 7), bool)), {"size": [5, 6], "counts": 3}]),
           dict(good, segmentations=[None])]
    problems = check.check_ytvis(gt, bad)
    assert any("unknown video 9" in p for p in problems) and any("unknown category 2" in p for p in problems)
    assert any("frame 0: mask size [5, 7]" in p for p in problems)
    assert any("frame 1: counts must be" in p for p in problems) and any("has 1 frames" in p for p in problems)

    kdir = tmp_path / "kitti"
    (kdir / "image_02" / "0001").mkdir(parents=True)
    for f in range(3):
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(kdir / "image_02" / "0001" / f"{f:06d}.png")
    m = box(10, 12, 0, 0, 3, 3)
    writers.write_kitti_mots_sequence(str(tmp_path / "kres"), 1, [(0, 1, 1, m), (2, 1, 1, m)])
    assert check.check_kitti_mots(str(kdir), str(tmp_path / "kres"), ["0001"]) == []
    writers.write_kitti_mots_sequence(str(tmp_path / "kres"), 1, [(3, 1, 1, m)])
    assert "frame 3 outside" in check.check_kitti_mots(str(kdir), str(tmp_path / "kres"), ["0001"])[0]
    writers.write_kitti_mots_sequence(str(tmp_path / "kres"), 1, [(1, 1, 1, box(9, 12, 0, 0, 3, 3))])
    assert "frame 1: mask size (9, 12)" in check.check_kitti_mots(str(kdir), str(tmp_path / "kres"), ["0001"])[0]


def test_cli_evaluate_and_check(tmp_path):
    maps = make_davis(str(tmp_path / "gt"))
    res = str(tmp_path / "res")
    writers.write_davis_sequence(res, "s1", ["00000", "00001", "00002"], maps)
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, os.path.join(ROOT, "tools", "evaluate.py"), "--benchmark", "davis", "--gt",
           str(tmp_path / "gt"), "--results", res]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    assert "J&F-Mean" in out and "Evaluated 3 frames in" in out
    saved = json.load(open(os.path.join(res, "evaluation_davis.json")))
    assert saved["global"]["J&F-Mean"] == 1.0
    ok = subprocess.run(cmd + ["--check"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "0 problem(s)" in ok.stdout
    os.remove(os.path.join(res, "s1", "00001.png"))
    bad = subprocess.run(cmd + ["--check"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "missing result frame 00001" in bad.stdout


def test_rle_areas_beyond_pycocotools_uint8_limit():
    """pycocotools' area() overflows on numpy 2 past 255 RLEs; our wrapper must not."""
    from pycocotools import mask as mask_utils

    from stemseg_jax.io import rle_areas

    rng = np.random.default_rng(0)
    masks = rng.random((300, 12, 10)) < 0.3
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    np.testing.assert_array_equal(rle_areas(rles), masks.reshape(300, -1).sum(1))
    assert rle_areas([]).shape == (0,)


def test_atomic_writes_get_the_mode_of_an_ordinary_write(tmp_path):
    """mkstemp makes 0600 files; results and datasets must be readable as an open() would leave them."""
    old = os.umask(0o022)
    try:
        ordinary = tmp_path / "ordinary.txt"
        ordinary.write_text("x")
        for path in (io.write_text(str(tmp_path / "a.txt"), "x"), io.write_json(str(tmp_path / "b.json"), {}),
                     io.write_indexed_png(str(tmp_path / "c.png"), np.zeros((2, 2), np.uint8))):
            assert os.stat(path).st_mode & 0o777 == os.stat(ordinary).st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
