"""Loading the published STEm-Seg weights: official PyTorch checkpoints -> Flax variables (orbax)."""

from stemseg_jax.convert.official import (
    CheckpointMismatchError,
    convert_official_checkpoint,
    convert_state_dict,
    expected_variables,
    load_variables,
    official_name,
    plan_conversion,
    read_state_dict,
    save_variables,
)

__all__ = [
    "CheckpointMismatchError",
    "convert_official_checkpoint",
    "convert_state_dict",
    "expected_variables",
    "load_variables",
    "official_name",
    "plan_conversion",
    "read_state_dict",
    "save_variables",
]
