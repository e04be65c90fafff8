"""Reading model variables from train-state and variables checkpoints (stemseg_jax.checkpoints)."""

import numpy as np
import orbax.checkpoint as ocp
import pytest

from stemseg_jax.checkpoints import restore_model_variables


def _save(path, tree):
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(str(path), tree)


def test_train_state_gives_its_variables_and_prefers_the_average(tmp_path):
    state = {
        "step": np.int32(7),
        "params": {"w": np.ones(3, np.float32)},
        "ema_params": {"w": np.full(3, 0.25, np.float32)},
        "opt_state": {"mu": np.zeros(3, np.float32)},
        "constants": {"frozen_bn": {"mean": np.arange(2, dtype=np.float32)}, "buffers": {}},
    }
    # A CheckpointManager step directory keeps the tree under default/.
    _save(tmp_path / "checkpoints" / "7" / "default", state)
    step_dir = str(tmp_path / "checkpoints" / "7")
    averaged = restore_model_variables(step_dir, "train.init_checkpoint")
    assert sorted(averaged) == ["buffers", "frozen_bn", "params"]
    np.testing.assert_array_equal(averaged["params"]["w"], state["ema_params"]["w"])
    np.testing.assert_array_equal(averaged["frozen_bn"]["mean"], state["constants"]["frozen_bn"]["mean"])
    raw = restore_model_variables(step_dir, "train.init_checkpoint", use_ema=False)
    np.testing.assert_array_equal(raw["params"]["w"], state["params"]["w"])


def test_variables_checkpoint_and_bad_paths_name_the_field(tmp_path):
    _save(tmp_path / "converted", {"params": {"w": np.ones(2, np.float32)}, "frozen_bn": {}})
    variables = restore_model_variables(str(tmp_path / "converted"), "config.inference.checkpoint")
    assert variables["buffers"] == {} and variables["params"]["w"].tolist() == [1.0, 1.0]

    with pytest.raises(FileNotFoundError, match=r"^train.init_checkpoint: .*nowhere is not a checkpoint directory"):
        restore_model_variables(str(tmp_path / "nowhere"), "train.init_checkpoint")
    _save(tmp_path / "other", {"weights": np.ones(2, np.float32)})
    with pytest.raises(ValueError, match=r"^config.inference.checkpoint: .*other holds neither .*\['weights'\]"):
        restore_model_variables(str(tmp_path / "other"), "config.inference.checkpoint")
