"""Dataset readers, synthetic datasets and the input pipeline (never imports the model)."""

from stemseg_jax.data.readers import READERS, load_dataset
from stemseg_jax.data.records import EmptyMaskSource, MaskSource, VideoRecord
from stemseg_jax.io import read_image

__all__ = ["EmptyMaskSource", "MaskSource", "READERS", "VideoRecord", "load_dataset", "read_image"]

# Input pipeline (clip sampling, augmentation, grain workers).
from stemseg_jax.data.pipeline import build_train_iterator  # noqa: E402

__all__ += ["build_train_iterator"]
