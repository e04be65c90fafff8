"""Errors a user causes: one line ``error: ...`` and exit status 2 (the traceback with --verbose), nothing
half-made in the workdir on a failed start, and checkpoints that fail to save or to restore."""

import errno
import logging
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from stemseg_jax import main
from stemseg_jax.data.synthetic import generate
from tests.helpers import REPO, load_config, tiny_train_config


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "stemseg_jax.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def _error_lines(stderr: str) -> list[str]:
    """The last two lines: ``error: ...`` and the hint (a progress bar may come before)."""
    return stderr.strip().splitlines()[-2:]


def test_help_lists_the_modes_and_points_to_the_config_schema():
    out = _cli("--help").stdout
    for mode in main.MODES:
        assert f"\n  {mode} " in out
    assert "stemseg_jax/config.py" in out and "--[no]verbose" in out and "STEMSEG_VERBOSE=1" in out


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/kitti.py:tiny", "--config.train.num_step=5"],
     "error: --config.train.num_step=5: no config field 'num_step' (Did you mean \"num_steps\""),
    (["--config", "configs/kitti.py:bogus"], "unknown config variant(s) ['bogus']"),
    (["--config", "configs/nope.py"], "error: --config configs/nope.py: no such config file"),
])
def test_bad_flags_are_one_line(args, message):
    proc = _cli(*args, "--mode", "smoke")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    error, hint = proc.stderr.strip().splitlines()
    assert error.startswith("error: ") and message in error
    assert hint == main.USAGE_HINT


def test_verbose_shows_the_traceback():
    proc = _cli("--config", "configs/kitti.py:tiny", "--config.train.num_step=5", "--verbose")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    config = load_config("kitti", "tiny")
    config.inference.benchmark = "coco"
    with pytest.raises(ValueError, match="config.inference.benchmark='coco': unknown benchmark"):
        main.run_reporting_errors(config, "/tmp/unused", "evaluate", verbose=True)


def test_a_bug_keeps_its_traceback(monkeypatch):
    def buggy(*args):
        raise TypeError("a bug, not the user's doing")

    monkeypatch.setattr(main, "run", buggy)
    with pytest.raises(TypeError, match="a bug"):
        main.run_reporting_errors(load_config("kitti", "tiny"), "/tmp/unused", "evaluate")


_kitti_tiny = tiny_train_config


@pytest.mark.parametrize("field, value, message", [
    ("train.decay_start", 4, r"train.decay_start \(4\) must be smaller than train.num_steps \(4\)"),
    ("train.optimizer", "adam", "train.optimizer must be 'sgd' or 'adamw', got 'adam'"),
    ("train.keep_checkpoints", 0, r"config.train.keep_checkpoints must be an integer >= 1, got 0"),
    ("inference.benchmark", "coco", "config.inference.benchmark='coco': unknown benchmark"),
    ("data.datasets.kitti_mots.root", "/nowhere", "training data not found: config.data.datasets.kitti_mots.root"),
])
def test_a_bad_setting_stops_training_before_the_workdir_is_created(tmp_path, capsys, field, value, message):
    config = _kitti_tiny(str(tmp_path))
    section, _, name = field.rpartition(".")
    node = config
    for part in section.split("."):
        node = node[part]
    node[name] = value
    workdir = tmp_path / "run"
    assert main.run_reporting_errors(config, str(workdir), "train") == 2
    error, hint = _error_lines(capsys.readouterr().err)
    assert error.startswith("error: ") and hint == main.VERBOSE_HINT
    assert re.search(message, error), error
    assert not workdir.exists()


def _frames(path, n=2):
    os.makedirs(path)
    for t in range(n):
        cv2.imwrite(os.path.join(path, f"{t:05d}.png"), np.full((64, 96, 3), 40 * t, np.uint8))
    return str(path)


@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("fail, strerror", [("open", "Permission denied"), ("write", "No space left on device")])
def test_a_read_only_or_full_workdir_is_found_before_anything_runs(tmp_path, capsys, monkeypatch, mode, fail,
                                                                  strerror):
    # Simulated: the tests run as root, for whom no directory is read-only, and no disk here is full.
    config = _kitti_tiny(str(tmp_path))
    config.inference.input = _frames(tmp_path / "frames")
    real = {"open": os.open, "write": os.write}
    probes = {}

    def failing_open(path, *args, **kwargs):
        if ".stemseg-write-probe-" in str(path):
            if fail == "open":
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            fd = real["open"](path, *args, **kwargs)
            probes[fd] = path
            return fd
        return real["open"](path, *args, **kwargs)

    def failing_write(fd, data):
        if fd in probes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real["write"](fd, data)

    monkeypatch.setattr(os, "open", failing_open)
    monkeypatch.setattr(os, "write", failing_write)
    workdir = tmp_path / "run"
    assert main.run_reporting_errors(config, str(workdir), mode) == 2
    error, _ = _error_lines(capsys.readouterr().err)
    assert error.startswith(f"error: --workdir {workdir} is not writable: cannot write ") and error.endswith(strerror)
    monkeypatch.undo()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".stemseg")]
    if os.path.isdir(workdir):  # train creates --workdir before it probes it, nothing inside
        assert os.listdir(workdir) == []


def test_workdir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main.run_reporting_errors(_kitti_tiny(str(tmp_path)), str(tmp_path / "file"), "train") == 2
    assert _error_lines(capsys.readouterr().err)[0] == f"error: --workdir {tmp_path / 'file'} is not a directory"


def test_unreadable_video_and_missing_checkpoints_are_one_line(tmp_path, capsys):
    config = load_config("kitti", "tiny")
    (tmp_path / "notavideo.mp4").write_bytes(b"\0not a video" * 100)
    config.inference.input = str(tmp_path / "notavideo.mp4")
    assert main.run_reporting_errors(config, str(tmp_path / "run"), "infer") == 2
    assert _error_lines(capsys.readouterr().err)[0] == (
        f"error: config.inference.input: could not decode any frame of {tmp_path / 'notavideo.mp4'} "
        "(not a video OpenCV can read?)")

    config.inference.input = _frames(tmp_path / "frames")
    assert main.run_reporting_errors(config, str(tmp_path / "run"), "infer") == 2
    assert _error_lines(capsys.readouterr().err)[0].startswith(
        f"error: no checkpoint in {tmp_path / 'run' / 'checkpoints'}; train first or set "
        "--config.inference.checkpoint=PATH")
    config.inference.checkpoint = str(tmp_path / "nowhere")
    assert main.run_reporting_errors(config, str(tmp_path / "run"), "infer") == 2
    assert _error_lines(capsys.readouterr().err)[0] == (
        f"error: config.inference.checkpoint: {tmp_path / 'nowhere'} is not a checkpoint directory")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny KITTI-MOTS run of 4 steps with checkpoints at steps 2 and 4."""
    from stemseg_jax.train.trainer import train

    root = str(tmp_path_factory.mktemp("kitti"))
    generate("kitti_mots", root, seed=0, num_train=2, num_val=1, num_frames=10, height=64, width=96)
    config = _kitti_tiny(root)
    workdir = str(tmp_path_factory.mktemp("run"))
    train(config, workdir, progress=False)
    assert {"2", "4"} <= set(os.listdir(os.path.join(workdir, "checkpoints")))
    return config, workdir


def test_a_checkpoint_of_another_config_names_the_path_and_the_tensors(trained, tmp_path):
    from stemseg_jax.methods import stemseg
    from stemseg_jax.train.trainer import train

    config, workdir = trained
    stemseg.build(config, workdir, "auto")  # its own config fits
    newest = os.path.join(workdir, "checkpoints", "4")
    davis = load_config("davis", "tiny")
    with pytest.raises(ValueError, match=rf"^config.inference.checkpoint: {newest} does not fit this config's model"
                                         r".* tensors differ: params/"):
        stemseg.build(davis, workdir, "auto")
    # Resuming a run with another model: an error naming the checkpoint, which is left where it is.
    other = config.copy_and_resolve_references()
    other.model.fpn_channels = 16
    with pytest.raises(ValueError, match=rf"^checkpoint {newest} does not fit .* is \(.*32\) in the checkpoint"):
        train(other, workdir, progress=False)
    assert os.path.isdir(newest) and not os.path.exists(os.path.join(workdir, "broken_checkpoints"))


def test_a_broken_newest_checkpoint_falls_back_to_the_older_one(trained, tmp_path, caplog):
    from stemseg_jax.train.trainer import train

    config, source = trained
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    step_dir = os.path.join(workdir, "checkpoints", "4")
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:  # a write cut short: half the largest array file
        f.truncate(os.path.getsize(biggest) // 2)
    with caplog.at_level(logging.WARNING, logger="stemseg_jax"):
        state = train(config, workdir, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"checkpoint {step_dir} is broken (")
    assert warnings[0].endswith("resuming from step 2 instead")
    assert int(state["step"]) == 4
    assert os.path.isdir(os.path.join(workdir, "broken_checkpoints", "4"))
    assert os.path.isdir(step_dir)  # saved again by the resumed run

    # None intact: a clear error, and nothing is moved.
    for step in os.listdir(os.path.join(workdir, "checkpoints")):
        os.remove(os.path.join(workdir, "checkpoints", step, "default", "_METADATA"))
    with pytest.raises(ValueError, match=rf"^no intact checkpoint in {workdir}/checkpoints: 4: .*; 2: "):
        train(config, workdir, progress=False)
    assert os.path.isdir(step_dir)


def test_a_failed_save_stops_training_at_once_with_one_line(trained, tmp_path, capsys, caplog, monkeypatch):
    # Simulated: orbax's background commit of the step-2 checkpoint fails as on a full disk.
    from orbax.checkpoint._src.checkpointers import async_checkpointer

    config, _ = trained
    config = config.copy_and_resolve_references()
    config.train.num_steps, config.train.decay_start = 8, 4
    real = async_checkpointer._background_wait_for_commit_futures

    def full_disk(directory, *args, **kwargs):
        if os.path.basename(str(directory)).startswith("2"):
            for f in args[0]:  # the writes end, then the commit fails
                f.result()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return real(directory, *args, **kwargs)

    monkeypatch.setattr(async_checkpointer, "_background_wait_for_commit_futures", full_disk)
    workdir = tmp_path / "run"
    assert main.run_reporting_errors(config, str(workdir), "train") == 2
    error, hint = _error_lines(capsys.readouterr().err)
    assert error.startswith(f"error: checkpoint step 2: saving to {workdir}/checkpoints/2 failed: OSError: "
                            "[Errno 28] No space left on device")
    assert hint == main.VERBOSE_HINT
    # Stopped before the next checkpoint step (4), not at the end; orbax's logged traceback was not printed.
    assert not {"4", "6", "8"} & set(os.listdir(workdir / "checkpoints"))
    assert not [r for r in caplog.records if r.exc_info and "orbax" in r.pathname]
