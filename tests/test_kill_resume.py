"""kill -9 during training, while a checkpoint is being written: the restarted command resumes from the newest
committed checkpoint and ends with the parameters of an uninterrupted run, bit for bit; its TensorBoard log
shows every step once and ends in no torn record."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from stemseg_jax.data.synthetic import generate
from stemseg_jax.train.summaries import drop_events_after, read_event_records
from tests.helpers import REPO

NUM_STEPS = 6
SLOW_STEP = 4  # the checkpoint the killed run is writing when it dies (checkpoints every 2 steps)


def _scalars(logdir: str, tag: str = "train/loss") -> list[tuple[int, float]]:
    """``(step, value)`` of every ``tag`` event in the folder's event files, in file order; asserts that no
    file has a torn record."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for name in sorted(os.listdir(logdir)):
        records, whole = read_event_records(os.path.join(logdir, name))
        assert whole, f"{name} ends in a torn record"
        for r in records:
            event = Event.FromString(r)
            out += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return out


def test_drop_events_after_keeps_earlier_steps_and_cuts_a_torn_tail(tmp_path):
    from tensorboardX import SummaryWriter

    logdir = str(tmp_path / "tb")
    writer = SummaryWriter(logdir)
    for step in range(1, 6):
        writer.add_scalar("train/loss", 1.0 / step, step)
        writer.add_scalar("train/lr", 0.1, step)
    writer.close()
    (name,) = os.listdir(logdir)
    with open(os.path.join(logdir, name), "ab") as f:  # a write torn by SIGKILL: a header and half a body
        f.write(np.uint64(40).tobytes() + b"\0" * 4 + b"half")
    with pytest.raises(AssertionError, match="torn"):
        _scalars(logdir)
    assert drop_events_after(logdir, 3) == 2 * 2 + 1
    assert _scalars(logdir) == [(s, pytest.approx(1.0 / s)) for s in (1, 2, 3)]
    assert _scalars(logdir, "train/lr") == [(s, pytest.approx(0.1)) for s in (1, 2, 3)]
    assert drop_events_after(logdir, 3) == 0  # nothing left to drop: the file is not rewritten
    assert drop_events_after(str(tmp_path / "none"), 3) == 0


# The CLI, with orbax's commit of checkpoint SLOW_STEP (the rename of its finished temporary directory) held
# back, so that the test can kill the process while that save is in flight.
DRIVER = textwrap.dedent(
    """
    import asyncio, os, sys
    sys.path.insert(0, {repo!r})
    from orbax.checkpoint._src.path import atomicity

    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def slow_finalize(self, *args, **kwargs):
        if os.path.basename(str(self.get_final())) == {slow!r}:
            open({marker!r}, "w").close()
            await asyncio.sleep(600)
        return await finalize(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize
    from absl import app
    from stemseg_jax import main
    app.run(main.main, flags_parser=main.parse_flags)
    """
)


def _command(data: str, workdir: str) -> list[str]:
    data_overrides = dict(num_frames=4, min_dim=64, max_dim=96, max_instances=4, num_workers=0)
    args = [f"--config={os.path.join(REPO, 'configs', 'kitti.py')}:tiny", f"--workdir={workdir}",
            f"--config.data.datasets.kitti_mots.root={data}",
            "--config.data.datasets.kitti_mots.sequences=('0000', '0001')",
            f"--config.train.num_steps={NUM_STEPS}", "--config.train.decay_start=3",
            "--config.train.checkpoint_every=2", "--config.train.log_every=1", "--config.train.image_summary_every=0",
            "--config.train.ema_decay=0.9"]
    args += [f"--config.data.{k}={v}" for k, v in data_overrides.items()]
    return args


def _env() -> dict:
    cache = os.path.join(REPO, ".jax_cache")
    return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": cache,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5", "PYTHONPATH": REPO}


def _final_state(workdir: str) -> dict:
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(os.path.join(workdir, "checkpoints", str(NUM_STEPS), "default"))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(state)[0]}


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_resumes_bit_identically_with_a_clean_log(tmp_path):
    data = str(tmp_path / "data")
    generate("kitti_mots", data, seed=0, num_train=2, num_val=1, num_frames=10, height=64, width=96)
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    marker = str(tmp_path / "saving")
    driver = DRIVER.format(repo=REPO, slow=str(SLOW_STEP), marker=marker)
    # The uninterrupted run and the one to kill run side by side (the test's wall time is theirs).
    reference = subprocess.Popen([sys.executable, "-m", "stemseg_jax.main", *_command(data, full)], env=_env(),
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen([sys.executable, "-c", driver, *_command(data, killed)], env=_env(), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 400
        while not os.path.exists(marker):
            assert victim.poll() is None, victim.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "checkpoint 4 was never saved"
            time.sleep(0.05)
        ckpt = os.path.join(killed, "checkpoints")
        assert any(n.startswith(f"{SLOW_STEP}.orbax-checkpoint-tmp") for n in os.listdir(ckpt)), os.listdir(ckpt)
        victim.send_signal(signal.SIGKILL)
        victim.wait(60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert "2" in os.listdir(ckpt) and str(SLOW_STEP) not in os.listdir(ckpt)
    logged = [s for s, _ in _scalars_raw(os.path.join(killed, "tensorboard"))]
    assert max(logged) > 2  # the killed run logged steps past its last committed checkpoint

    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-3000:]
    resumed = subprocess.run([sys.executable, "-m", "stemseg_jax.main", *_command(data, killed)], env=_env(),
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not any("orbax-checkpoint-tmp" in n for n in os.listdir(ckpt)), os.listdir(ckpt)

    a, b = _final_state(full), _final_state(killed)
    assert a.keys() == b.keys() and any("ema_params" in k for k in a) and any("opt_state" in k for k in a)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # Each step is in the resumed run's log once, with the uninterrupted run's loss.
    reference_log = _scalars(os.path.join(full, "tensorboard"))
    resumed_log = _scalars(os.path.join(killed, "tensorboard"))
    assert [s for s, _ in resumed_log] == list(range(1, NUM_STEPS + 1)), resumed_log
    assert resumed_log == reference_log


def _scalars_raw(logdir: str, tag: str = "train/loss") -> list[tuple[int, float]]:
    """Like ``_scalars``, tolerating a torn tail (the killed run's files before the resume cleans them)."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for name in sorted(os.listdir(logdir)):
        records, _ = read_event_records(os.path.join(logdir, name))
        for r in records:
            event = Event.FromString(r)
            out += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return out
