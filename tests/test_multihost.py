"""Multi-host training (``train.distributed=True``): two local processes, one CPU device each, give the
parameters of one process with two devices, each process training on its own half of every batch."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from stemseg_jax.data.synthetic import generate
from tests.helpers import REPO

# Run in a fresh interpreter: the device count and jax.distributed must be set before jax starts.
WORKER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {repo!r})
    import jax, numpy as np
    from stemseg_jax.data import pipeline
    from stemseg_jax.train import trainer
    from tests.helpers import tiny_train_config

    config = tiny_train_config({data!r})
    config.train.num_steps, config.train.decay_start = 2, 1
    config.train.distributed = {distributed!r}
    clip_ids = []
    build = pipeline.build_train_iterator

    def recording(*args, **kwargs):  # what the trainer's own pipeline gives this process
        for batch in build(*args, **kwargs):
            clip_ids.append([str(c) for c in batch["clip_ids"]])
            yield batch

    pipeline.build_train_iterator = recording
    init_state, inits = trainer.init_state, []

    def recording_init(*args, **kwargs):
        state = init_state(*args, **kwargs)
        inits.append(jax.device_get(state["params"]))
        return state

    trainer.init_state = recording_init
    state = trainer.train(config, {workdir!r}, progress=False)

    def flat(tree):
        return {{jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}}

    np.savez({out!r} + ".npz", **flat(state["params"]))
    np.savez({out!r} + "_init.npz", **flat(inits[0]))
    info = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                devices=jax.device_count(), local_devices=jax.local_device_count(),
                step=int(state["step"]), clip_ids=clip_ids[:2])
    with open({out!r} + ".json", "w") as f:
        json.dump(info, f)
    """
)
# Per parameter array: max |2 processes - 2 devices| <= TOLERANCE * max |update of the two steps| (+ 1e-7):
# the gradient mean over the two clips is the same sum, reduced by gloo instead of inside one process
# (measured: bit-identical, 0.0).
TOLERANCE = 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, name, data, workdir, distributed, env):
    out = str(tmp_path / name)
    code = WORKER.format(repo=REPO, data=data, workdir=workdir, distributed=distributed, out=out)
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    proc = subprocess.Popen([sys.executable, "-c", code], env={**base, "JAX_PLATFORMS": "cpu", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    return proc, out


def _finish(procs):
    logs = {}
    for name, (proc, _) in procs.items():
        try:
            logs[name] = proc.communicate(timeout=600)[0]
        except subprocess.TimeoutExpired:
            for p, _ in procs.values():
                p.kill()
            pytest.fail(f"{name} did not finish in 600 s")
    for name, (proc, _) in procs.items():
        assert proc.returncode == 0, f"{name} failed:\n{logs[name][-4000:]}"


@pytest.mark.slow
def test_two_processes_equal_one_process_with_two_devices(tmp_path):
    data = str(tmp_path / "kitti")
    generate("kitti_mots", data, seed=0, num_train=2, num_val=1, num_frames=10, height=64, width=96)
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = {
        f"process {i}": _start(tmp_path, f"p{i}", data, str(tmp_path / "multi"), True,
                               {"JAX_COORDINATOR_ADDRESS": coordinator, "STEMSEG_NUM_PROCESSES": "2",
                                "STEMSEG_PROCESS_ID": str(i)})  # fmt: skip
        for i in range(2)
    }
    _finish(procs)
    # After the pair: both at once with a third compile would only slow all three on a small machine.
    single = {"single": _start(tmp_path, "single", data, str(tmp_path / "one"), False,
                               {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})}  # fmt: skip
    _finish(single)

    info = {name: json.load(open(out + ".json")) for name, (_, out) in {**procs, **single}.items()}
    for i in range(2):
        got = info[f"process {i}"]
        assert (got["process_index"], got["process_count"], got["devices"], got["local_devices"]) == (i, 2, 2, 1)
        assert got["step"] == 2
    assert (info["single"]["process_count"], info["single"]["devices"]) == (1, 2)
    # Each process read its own clip of every batch: together the single process's batch, slot by slot.
    for step, clips in enumerate(info["single"]["clip_ids"]):
        assert len(clips) == 2
        assert [info[f"process {i}"]["clip_ids"][step] for i in range(2)] == [[clips[0]], [clips[1]]]
    assert len(set(info["single"]["clip_ids"][0])) == 2  # the two halves differ, so the check can fail

    p0, p1, ref, init = (np.load(procs["process 0"][1] + ".npz"), np.load(procs["process 1"][1] + ".npz"),
                         np.load(single["single"][1] + ".npz"), np.load(single["single"][1] + "_init.npz"))  # fmt: skip
    assert p0.files == ref.files == init.files
    np.testing.assert_array_equal(np.load(procs["process 0"][1] + "_init.npz")[ref.files[0]], init[ref.files[0]])
    worst, moved = 0.0, 0
    for k in ref.files:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)  # replicated: bit-identical on both hosts
        update = float(np.abs(ref[k] - init[k]).max())
        diff = float(np.abs(p0[k] - ref[k]).max())
        moved += update > 0
        assert diff <= TOLERANCE * update + 1e-7, (k, diff, update)
        worst = max(worst, diff / update if update else 0.0)
    assert moved > len(ref.files) // 2  # two steps moved most parameters, so the comparison means something
    print(f"max |2 processes - 2 devices| / max |update| over {len(ref.files)} parameter arrays: {worst:.2e}")
