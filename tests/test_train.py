"""Training: schedule, optimiser semantics, data-parallel equivalence, exact resume, NaN guard."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stemseg_jax.data.synthetic import generate
from stemseg_jax.losses import prepare_targets
from stemseg_jax.train.optim import build_optimizer, learning_rate_schedule
from stemseg_jax.train.trainer import train, update_ema
from tests.helpers import REPO, load_config, tiny_train_config


def test_schedule_constant_then_exponential_to_final():
    config = load_config("kitti")
    sched = learning_rate_schedule(config.train)
    t = config.train
    # optax counts updates from 0; optimizer step j (1-based) gets lr0 * gamma ** max(0, j - start)
    gamma = (t.final_learning_rate / t.learning_rate) ** (1 / (t.num_steps - t.decay_start))
    for j in (1, 1000, t.decay_start, t.decay_start + 1, 70_000, t.num_steps):
        expected = t.learning_rate * gamma ** max(0, j - t.decay_start)
        assert float(sched(j - 1)) == pytest.approx(expected, rel=1e-4)
    assert float(sched(t.num_steps - 1)) == pytest.approx(1e-5, rel=1e-4)
    assert float(sched(0)) == pytest.approx(1e-3)


def test_official_davis_stage1_schedule_ends_at_1e4():
    t = load_config("davis", "official").train
    assert (t.num_steps, t.decay_start) == (50_000, 40_000)
    assert float(learning_rate_schedule(t)(t.num_steps - 1)) == pytest.approx(1e-4, rel=1e-4)


def test_sgd_matches_pytorch_semantics_and_skips_frozen():
    """Three steps against a float64 transcription of torch.optim.SGD(nesterov, weight_decay)."""
    config = load_config("kitti")
    config.train.schedule = "constant"
    params = {"a": jnp.asarray([1.0, -2.0, 0.5]), "frozen": jnp.asarray([3.0])}
    mask = {"a": True, "frozen": False}
    opt = build_optimizer(config.train, mask)
    state = opt.init(params)
    rng = np.random.default_rng(0)
    p_ref = np.asarray(params["a"], np.float64)
    buf = None
    lr, mom, wd = 1e-3, 0.9, 1e-4
    for _ in range(3):
        g = rng.normal(size=3)
        updates, state = opt.update({"a": jnp.asarray(g, jnp.float32), "frozen": jnp.ones(1)}, state, params)
        params = optax.apply_updates(params, updates)
        d = g + wd * p_ref
        buf = d if buf is None else mom * buf + d
        p_ref = p_ref - lr * (d + mom * buf)
    np.testing.assert_allclose(np.asarray(params["a"]), p_ref, rtol=1e-6)
    assert float(params["frozen"][0]) == 3.0


def test_adamw_matches_decoupled_weight_decay_and_skips_frozen():
    """Three steps against a float64 transcription of torch.optim.AdamW (betas 0.9/0.999, eps 1e-8)."""
    config = load_config("kitti")
    config.train.schedule = "constant"
    config.train.optimizer = "adamw"
    config.train.learning_rate = 2e-3
    params = {"a": jnp.asarray([1.0, -2.0, 0.5]), "frozen": jnp.asarray([3.0])}
    opt = build_optimizer(config.train, {"a": True, "frozen": False})
    state = opt.init(params)
    rng = np.random.default_rng(1)
    p_ref = np.asarray(params["a"], np.float64)
    m = v = np.zeros(3)
    lr, wd = 2e-3, 1e-4
    for k in range(1, 4):
        g = rng.normal(size=3)
        updates, state = opt.update({"a": jnp.asarray(g, jnp.float32), "frozen": jnp.ones(1)}, state, params)
        params = optax.apply_updates(params, updates)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        p_ref = p_ref * (1 - lr * wd) - lr * (m / (1 - 0.9**k)) / (np.sqrt(v / (1 - 0.999**k)) + 1e-8)
    np.testing.assert_allclose(np.asarray(params["a"]), p_ref, rtol=1e-5)
    assert float(params["frozen"][0]) == 3.0
    config.train.optimizer = "adam"
    with pytest.raises(ValueError, match="train.optimizer must be 'sgd' or 'adamw', got 'adam'"):
        build_optimizer(config.train, {"a": True, "frozen": False})


_tiny_train_config = tiny_train_config


@pytest.fixture(scope="module")
def kitti_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("kitti"))
    generate("kitti_mots", root, seed=0, num_train=2, num_val=1, num_frames=10, height=64, width=96)
    return root


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
def test_resume_after_interruption_is_bit_identical(kitti_data, tmp_path):
    config = _tiny_train_config(kitti_data)
    config.train.ema_decay = 0.9  # the moving average is part of the state that must resume exactly
    full = train(config, str(tmp_path / "full"), progress=False)
    train(config, str(tmp_path / "resumed"), stop_after=2, progress=False)  # "killed" after the step-2 checkpoint
    # orbax also keeps the very first step; the newest checkpoint is the interruption point
    assert max(int(s) for s in os.listdir(tmp_path / "resumed" / "checkpoints")) == 2
    resumed = train(config, str(tmp_path / "resumed"), progress=False)
    assert int(resumed["step"]) == int(full["step"]) == 4
    a, b = _flat(full["params"]), _flat(resumed["params"])
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    moments_a, moments_b = _flat(full["opt_state"]), _flat(resumed["opt_state"])
    for k in moments_a:
        assert np.array_equal(moments_a[k], moments_b[k]), k
    ema_a, ema_b = _flat(full["ema_params"]), _flat(resumed["ema_params"])
    assert ema_a.keys() == a.keys()
    for k in ema_a:
        assert np.array_equal(ema_a[k], ema_b[k]), k
    # after 4 steps the average still lags the parameters (decay 0.1, 2/11, 3/12, 4/13 of the ramp)
    assert any(not np.array_equal(ema_a[k], a[k]) for k in a)


def test_ema_update_ramps_its_decay_and_matches_float64():
    rng = np.random.default_rng(0)
    trajectory = [rng.normal(size=(3, 2)) for _ in range(30)]
    ema = {"w": jnp.asarray(trajectory[0], jnp.float32)}
    expected = trajectory[0].copy()
    for step, p in enumerate(trajectory[1:]):
        ema = update_ema(ema, {"w": jnp.asarray(p, jnp.float32)}, jnp.int32(step), 0.9)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * p
        np.testing.assert_allclose(np.asarray(ema["w"]), expected, rtol=1e-5, atol=1e-6)
    # the ramp reaches the configured decay at step 80 (81/90 = 0.9) and stays there
    one = {"w": jnp.ones(())}
    zero = {"w": jnp.zeros(())}
    assert float(update_ema(one, zero, jnp.int32(0), 0.9)["w"]) == pytest.approx(0.1)
    assert float(update_ema(one, zero, jnp.int32(1000), 0.9)["w"]) == pytest.approx(0.9)


def test_non_finite_loss_names_step_and_clips(kitti_data, tmp_path):
    config = _tiny_train_config(kitti_data)
    config.train.schedule = "constant"
    config.train.learning_rate = 1e30
    with pytest.raises(FloatingPointError, match=r"at step 2 .*clips of this batch: \['kitti_mots/"):
        train(config, str(tmp_path / "nan"), progress=False)


TWO_DEVICES = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {repo!r})
    import jax, numpy as np
    from stemseg_jax.smoke import generated_batch
    from stemseg_jax.train.trainer import init_state, make_mesh, make_train_step, shard_batch
    from tests.helpers import load_config

    assert jax.device_count() == 2, jax.devices()
    config = load_config("kitti", "tiny")
    config.data.num_frames, config.data.max_instances = 4, 4
    a = generated_batch(config, height=64, width=96, num_instances=2, seed=1)
    b = generated_batch(config, height=64, width=96, num_instances=3, seed=2)
    batch = {{k: np.concatenate([a[k], b[k]]) for k in a}}
    state0 = jax.device_get(init_state(config, batch["images"], jax.random.PRNGKey(0)))
    results = {{}}
    for n in (1, 2):
        mesh = make_mesh(jax.devices()[:n])
        state = jax.device_put(state0, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        state, metrics = make_train_step(config, mesh)(state, shard_batch(batch, mesh))
        results[n] = jax.device_get((state["params"], metrics))
    la, lb = jax.tree_util.tree_leaves(results[1][0]), jax.tree_util.tree_leaves(results[2][0])
    p0 = jax.tree_util.tree_leaves(jax.device_get(state0["params"]))
    moved = max(float(np.abs(x - y).max()) for x, y in zip(la, p0))
    diff = max(float(np.abs(x - y).max() / (np.abs(x - z).max() + 1e-12)) for x, y, z in zip(la, lb, p0))
    print("loss", float(results[1][1]["loss"]), float(results[2][1]["loss"]), "moved", moved, "rel diff", diff)
    assert moved > 0
    assert abs(float(results[1][1]["loss"]) - float(results[2][1]["loss"])) < 1e-5
    assert diff < 1e-3, diff
    print("OK")
    """
)


@pytest.mark.slow
def test_two_devices_give_the_same_update_as_one_with_accumulation():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES.format(repo=REPO)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_init_checkpoint_loads_a_previous_run(kitti_data, tmp_path):
    """Second stages start from a first stage's checkpoint step directory (train.init_checkpoint)."""
    config = _tiny_train_config(kitti_data)
    config.train.num_steps, config.train.decay_start = 1, 0
    first = train(config, str(tmp_path / "stage1"), progress=False)
    config.train.init_checkpoint = str(tmp_path / "stage1" / "checkpoints" / "1")
    config.train.learning_rate = 0.0  # a zero step keeps the loaded parameters
    config.train.schedule = "constant"
    second = train(config, str(tmp_path / "stage2"), progress=False)
    a, b = _flat(first["params"]), _flat(second["params"])
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)


def test_loss_fn_target_rules(monkeypatch):
    """``loss.target_rule`` reaches the targets: "area" adds soft semantic targets, a typo names the field."""
    from stemseg_jax.losses import objective
    from stemseg_jax.model import build_model, init_variables

    seen = []

    def recording_prepare_targets(*args):
        out = prepare_targets(*args)
        seen.append((args[2], sorted(out)))
        return out

    monkeypatch.setattr(objective, "prepare_targets", recording_prepare_targets)

    config = load_config("kitti", "tiny")
    config.data.num_frames = 2
    batch = {
        "images": jax.ShapeDtypeStruct((1, 2, 64, 64, 3), jnp.uint8),
        "masks": jax.ShapeDtypeStruct((1, 2, 2, 64, 64), jnp.bool_),
        "instance_valid": jax.ShapeDtypeStruct((1, 2), jnp.bool_),
        "category_ids": jax.ShapeDtypeStruct((1, 2), jnp.int32),
        "ignore": jax.ShapeDtypeStruct((1, 2, 64, 64), jnp.bool_),
    }
    variables = jax.eval_shape(lambda: init_variables(config, jax.random.key(0), jnp.zeros((1, 2, 64, 64, 3))))
    params = variables["params"]
    constants = {k: v for k, v in variables.items() if k != "params"}
    for rule in ("official", "area"):
        config.loss.target_rule = rule
        total, terms = jax.eval_shape(objective.make_loss_fn(config, build_model(config)), params, constants, batch)
        assert total.shape == () and terms["foreground"].shape == ()
    assert [rule for rule, _ in seen] == ["official", "area"]
    assert "class_fractions" in seen[1][1] and "class_fractions" not in seen[0][1]
    config.loss.target_rule = "and"
    with pytest.raises(ValueError, match="config.loss.target_rule"):
        objective.make_loss_fn(config, build_model(config))
