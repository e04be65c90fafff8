"""Reading model variables from train-state and variables checkpoints (stemseg_jax.checkpoints)."""

import numpy as np
import orbax.checkpoint as ocp
import pytest

from stemseg_jax.checkpoints import restore_model_variables
from tests.helpers import load_config


def _save(path, tree):
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(str(path), tree)


def _train_state(step: int) -> dict:
    return {
        "step": np.int32(step),
        "params": {"w": np.ones(3, np.float32)},
        "ema_params": {"w": np.full(3, 0.25, np.float32)},
        "opt_state": {"mu": np.zeros(3, np.float32)},
        "constants": {"frozen_bn": {"mean": np.arange(2, dtype=np.float32)}, "buffers": {}},
    }


def test_train_state_gives_its_variables_and_prefers_the_average(tmp_path):
    state = _train_state(7)
    # A CheckpointManager step directory keeps the tree under default/.
    _save(tmp_path / "checkpoints" / "7" / "default", state)
    step_dir = str(tmp_path / "checkpoints" / "7")
    averaged = restore_model_variables(step_dir, "train.init_checkpoint")
    assert sorted(averaged) == ["buffers", "frozen_bn", "params"]
    np.testing.assert_array_equal(averaged["params"]["w"], state["ema_params"]["w"])
    np.testing.assert_array_equal(averaged["frozen_bn"]["mean"], state["constants"]["frozen_bn"]["mean"])
    raw = restore_model_variables(step_dir, "train.init_checkpoint", use_ema=False)
    np.testing.assert_array_equal(raw["params"]["w"], state["params"]["w"])


def test_inference_restores_the_newest_checkpoint_and_honours_use_ema(tmp_path):
    from stemseg_jax.methods.stemseg import restore_variables

    _save(tmp_path / "checkpoints" / "3", {**_train_state(3), "ema_params": {"w": np.zeros(3, np.float32)}})
    _save(tmp_path / "checkpoints" / "12", _train_state(12))
    config = load_config("kitti", "tiny")
    assert restore_variables(config, str(tmp_path))["params"]["w"].tolist() == [0.25] * 3
    config.inference.use_ema = False
    restored = restore_variables(config, str(tmp_path))
    assert restored["params"]["w"].tolist() == [1.0] * 3
    assert "ema_params" not in restored and "opt_state" not in restored and "frozen_bn" in restored


def test_variables_checkpoint_and_bad_paths_name_the_field(tmp_path):
    _save(tmp_path / "converted", {"params": {"w": np.ones(2, np.float32)}, "frozen_bn": {}})
    variables = restore_model_variables(str(tmp_path / "converted"), "config.inference.checkpoint")
    assert variables["buffers"] == {} and variables["params"]["w"].tolist() == [1.0, 1.0]

    with pytest.raises(FileNotFoundError, match=r"^train.init_checkpoint: .*nowhere is not a checkpoint directory"):
        restore_model_variables(str(tmp_path / "nowhere"), "train.init_checkpoint")
    _save(tmp_path / "other", {"weights": np.ones(2, np.float32)})
    with pytest.raises(ValueError, match=r"^config.inference.checkpoint: .*other holds neither .*\['weights'\]"):
        restore_model_variables(str(tmp_path / "other"), "config.inference.checkpoint")
