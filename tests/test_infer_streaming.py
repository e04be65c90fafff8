"""--mode infer: lazy, forward-only frame reading, refusing mixed frame sizes, and fresh, atomic outputs."""

import os

import cv2
import numpy as np
import pytest
from PIL import Image

from stemseg_jax import runner
from stemseg_jax.io import write_image
from stemseg_jax.results import VideoResult, linked_from_label_maps
from tests.helpers import load_config


def _write_video(path, n, h=48, w=64):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
    rng = np.random.default_rng(0)
    for t in range(n):
        frame = rng.integers(0, 255, (h, w, 3), np.uint8)
        frame[:, : 4 * t % w] = 255
        writer.write(frame)
    writer.release()


def test_video_frames_are_read_forward_only_and_equal_a_sequential_decode(tmp_path):
    path = str(tmp_path / "clip.mp4")
    _write_video(path, 12)
    cap, expected = cv2.VideoCapture(path), []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        expected.append(frame)
    frames = runner.open_frames(path)
    assert len(frames) == len(expected) == 12 and frames.hw == (48, 64)
    for t in (0, 1, 1, 2, 5, 11, 3, 0):  # repeats, skips forward and going back (reopens)
        np.testing.assert_array_equal(frames(t), expected[t])
    frames.close()
    (tmp_path / "not_a_video.mp4").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not decode any frame of .*not_a_video.mp4"):
        runner.open_frames(str(tmp_path / "not_a_video.mp4"))


def test_a_folder_of_mixed_frame_sizes_is_refused_up_front(tmp_path):
    for t, (h, w) in enumerate([(32, 48), (32, 48), (40, 48)]):
        write_image(str(tmp_path / f"{t:05d}.jpg"), np.zeros((h, w, 3), np.uint8))
    with pytest.raises(ValueError, match=r"00002.jpg is 40x48, but the first frame 00000.jpg is 32x48"):
        runner.open_frames(str(tmp_path))


class _FakeSegmenter:
    """One track in the left half of every frame, at the input resolution (scale 1)."""

    def __init__(self, fail_after_frames=None):
        self.fail_after_frames = fail_after_frames

    def segment(self, load_frame, num_frames, original_hw, video=""):
        maps = np.full((num_frames, *original_hw), -1, np.int32)
        maps[:, :, : original_hw[1] // 2] = 0
        for t in range(num_frames):
            load_frame(t)
        return VideoResult(linked_from_label_maps(maps), None, 1, tuple(original_hw), tuple(original_hw), {})


def test_outputs_replace_an_earlier_run_as_a_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "build_method", lambda config, workdir, class_mode: _FakeSegmenter())
    frames_dir = tmp_path / "clip"
    frames_dir.mkdir()
    config = load_config("davis", "tiny")
    config.inference.input = str(frames_dir)
    workdir = str(tmp_path / "run")

    def video(n):
        for f in frames_dir.iterdir():
            f.unlink()
        for t in range(n):
            write_image(str(frames_dir / f"{t:05d}.jpg"), np.full((32, 48, 3), 10 * t, np.uint8))

    video(6)
    out = runner.infer_input(config, workdir, gif_frames=4)
    assert sorted(os.listdir(os.path.join(out, "masks"))) == [f"{t:05d}.png" for t in range(6)]
    labels = np.asarray(Image.open(os.path.join(out, "masks", "00003.png")))
    assert (labels[:, :24] == 1).all() and (labels[:, 24:] == 0).all()
    with Image.open(os.path.join(out, "overlay.gif")) as gif:
        assert gif.n_frames == 3  # every second frame of 6, for at most 4
    assert cv2.VideoCapture(os.path.join(out, "overlay.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 6

    video(3)  # a shorter video under the same name: no stale masks of the longer one
    runner.infer_input(config, workdir)
    assert sorted(os.listdir(os.path.join(out, "masks"))) == [f"{t:05d}.png" for t in range(3)]

    def broken_overlay(*_):
        raise RuntimeError("disk trouble")

    video(5)
    monkeypatch.setattr(runner, "overlay", broken_overlay)
    with pytest.raises(RuntimeError, match="disk trouble"):
        runner.infer_input(config, workdir)
    assert sorted(os.listdir(os.path.join(out, "masks"))) == [f"{t:05d}.png" for t in range(3)]  # intact
    assert os.listdir(os.path.join(workdir, "infer")) == ["clip"]  # no staging folder left behind
