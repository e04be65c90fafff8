"""The data check: truncated frames are errors, a category the model has no class for stops training at load
time, and ``tools/check_dataset.py`` lists every problem (file, record, frame, field) with exit status 1."""

import dataclasses
import io
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from stemseg_jax.data import check, pipeline
from stemseg_jax.data.readers import load_dataset
from stemseg_jax.data.synthetic import generate
from stemseg_jax.io import read_image
from tests.helpers import REPO, tiny_train_config

sys.path.insert(0, os.path.join(REPO, "tools"))
import check_dataset  # noqa: E402


@pytest.fixture(scope="module")
def kitti_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("kitti_check"))
    generate("kitti_mots", root, seed=0, num_train=2, num_val=1, num_frames=4, height=64, width=96)
    return root


def _config(root):
    config = tiny_train_config(root)
    config.data.val_dataset.root = root
    config.data.val_dataset.sequences = ("0002",)
    return config


def _frame(root, seq, t):
    return os.path.join(root, "training", "image_02", seq, f"{t:06d}.png")


def _smooth_image(h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 2)


def test_a_truncated_jpeg_or_png_is_an_error_naming_the_file(tmp_path):
    image = _smooth_image()
    for ext in (".jpg", ".png"):
        data = cv2.imencode(ext, image)[1].tobytes()
        whole = tmp_path / f"whole{ext}"
        whole.write_bytes(data + b"appended by a camera" + b"\0" * 8)  # bytes after the end marker are fine
        np.testing.assert_array_equal(read_image(str(whole)), cv2.imdecode(np.frombuffer(data, np.uint8), 1))
        for cut in (len(data) // 3, 40):
            cut_file = tmp_path / f"cut{cut}{ext}"
            cut_file.write_bytes(data[:-cut])
            # cv2.imread alone gives a grey-filled frame for the JPEG (libjpeg only warns)
            with pytest.raises(ValueError, match=f"(truncated|cannot decode).*{cut_file}"):
                read_image(str(cut_file))


def test_a_category_without_a_model_class_stops_training_at_load_time(kitti_data):
    config = tiny_train_config(kitti_data)
    config.model.num_classes = 2  # background and car: the synthetic data's pedestrians (class 2) have none
    for rule in ("official", "area"):
        config.loss.target_rule = rule
        with pytest.raises(ValueError, match=r"data\.datasets\.kitti_mots, record '000[01]': category_id: category "
                                             r"id 2 .*model.num_classes=2 .*instances_txt/000[01]\.txt"):
            pipeline.load_sources(config)
    # class-agnostic training maps every instance to class 1: nothing to report
    config.data.class_agnostic = True
    pipeline.load_sources(config)


def test_metadata_problems_are_listed_together(kitti_data):
    config = tiny_train_config(kitti_data)
    records = load_dataset(config.data.datasets.kitti_mots, "data.datasets.kitti_mots")
    gone = records[1].frame_paths[2].replace("000002.png", "missing.png")
    frames = records[1].frame_paths
    moved = dataclasses.replace(records[1], frame_paths=frames[:2] + (gone,) + frames[3:])
    bad_category = dataclasses.replace(records[0], categories={i: 7 for i in records[0].categories})
    with pytest.raises(ValueError, match=r"2 problem\(s\):.*record '0000': category_id: category id 7.*"
                                         r"record '0001', frame 2: frame_file: frame image not found .*missing\.png"):
        pipeline.load_sources(config, {"kitti_mots": [bad_category, moved]})


class _FailingMasks:
    """Masks of frame 1 are broken (e.g. an RLE that only fails when decoded)."""

    def __init__(self, inner):
        self.inner = inner

    def load(self, frame_indices, instance_ids):
        if 1 in frame_indices:
            raise ValueError("bad RLE in line 7")
        return self.inner.load(frame_indices, instance_ids)


def test_pixel_check_reports_mask_decoding_errors_per_frame(kitti_data):
    config = tiny_train_config(kitti_data)
    record = load_dataset(config.data.datasets.kitti_mots, "data.datasets.kitti_mots")[0]
    broken = dataclasses.replace(record, masks=_FailingMasks(record.masks))
    seen = []
    problems = check.check_record_pixels(broken, "data.datasets.kitti_mots", progress=seen.append)
    assert [(p.record, p.frame, p.field) for p in problems] == [("0000", 1, "masks")]
    assert "bad RLE in line 7" in str(problems[0]) and record.source in str(problems[0])
    assert sum(seen) == record.num_frames
    assert check.check_record_pixels(record, "data.datasets.kitti_mots") == []


@pytest.fixture(scope="module")
def broken_data(kitti_data, tmp_path_factory):
    """The synthetic data with a truncated frame (0000 frame 1) and a frame of the wrong size (0001 frame 2)."""
    root = str(tmp_path_factory.mktemp("kitti_broken"))
    shutil.copytree(kitti_data, root, dirs_exist_ok=True)
    path = _frame(root, "0000", 1)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    cv2.imwrite(_frame(root, "0001", 2), _smooth_image(48, 96))
    return root


def test_check_tool_lists_every_problem_and_exits_1(kitti_data, broken_data):
    out = io.StringIO()
    assert check_dataset.run(_config(kitti_data), progress=False, out=out) == 0, out.getvalue()
    assert "metadata: 2 dataset(s), 3 record(s), 0 problem(s)" in out.getvalue()
    assert "pixels: 12 frame(s)" in out.getvalue()

    out = io.StringIO()
    assert check_dataset.run(_config(broken_data), progress=False, threads=2, out=out) == 1
    lines = [line for line in out.getvalue().splitlines() if line.startswith("data.")]
    assert len(lines) == 2, out.getvalue()
    assert lines[0].startswith("data.datasets.kitti_mots, record '0000', frame 1: image: ")
    assert _frame(broken_data, "0000", 1) in lines[0]
    assert lines[1].startswith("data.datasets.kitti_mots, record '0001', frame 2: image_size: frame is 96x48, "
                               "the annotations say 96x64")
    assert "2 problem(s) found" in out.getvalue()
    # --quick decodes nothing: these pixel problems are not its to find
    out = io.StringIO()
    assert check_dataset.run(_config(broken_data), quick=True, out=out) == 0
    assert "pixels" not in out.getvalue()


def test_check_tool_command_line(broken_data, tmp_path):
    tool = os.path.join(REPO, "tools", "check_dataset.py")
    base = [sys.executable, tool, "--config", os.path.join(REPO, "configs", "kitti.py:tiny"),
            f"--config.data.datasets.kitti_mots.root={broken_data}",
            "--config.data.datasets.kitti_mots.sequences=('0000', '0001')", "--noval", "--noprogress"]
    proc = subprocess.run(base, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "record '0000', frame 1: image:" in proc.stdout and "2 problem(s) found" in proc.stdout
    proc = subprocess.run(base + ["--config.data.datasets.kitti_mots.rooot=x"], capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: --config override: 'rooot' (Did you mean \"root\""), proc.stderr
