"""The re-id network of the RI-Tracker baseline (seed supplementary Sec. III): model, batch-hard triplet loss,
triplet batches and training."""

from stemseg_jax.reid.data import TripletSampler, crop, mask_box
from stemseg_jax.reid.loss import batch_hard_triplet_loss
from stemseg_jax.reid.model import ReIDNet, build_reid, embed, make_embedder
from stemseg_jax.reid.train import default_reid_config, restore_reid, tiny_reid_config, train_reid

__all__ = [
    "ReIDNet", "TripletSampler", "batch_hard_triplet_loss", "build_reid", "crop", "default_reid_config", "embed",
    "make_embedder", "mask_box", "restore_reid", "tiny_reid_config", "train_reid",
]
