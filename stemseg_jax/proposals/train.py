"""Training the Mask R-CNN proposal network (seed Sec. III) on the same dataset mixture and readers as STEm-Seg.

The seed trains its baselines' Mask R-CNN "jointly on YouTube-VIS, DAVIS'19 and augmented images from COCO and
Pascal VOC" with SGD (momentum 0.9) at 1e-3 with exponential decay: exactly ``config.data.datasets`` of the
benchmark config, so the samples come from the STEm-Seg input pipeline (``data.build_train_iterator``) with
one-frame clips. A video contributes single frames; an image dataset contributes images through the seed's
image augmentation (the pseudo-video's first frame), i.e. "augmented images". Instance duplication, a
STEm-Seg-specific augmentation, is off. Ignore regions (crowd, void) are not instances and get no loss, as in
torchvision's Mask R-CNN, which drops crowd annotations.
"""

from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np

from stemseg_jax import preprocessing

log = logging.getLogger(__name__)


def proposal_data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with the input pipeline set to one-frame samples and the Mask R-CNN's batch and schedule."""
    c = config.copy_and_resolve_references()
    t = config.proposals.train
    with c.unlocked():
        c.data.num_frames = 1
        c.data.frame_gap = 0
        c.data.instance_duplication = False
        c.data.crop_width = 0
        for name in c.data.datasets:
            if "frame_gap" in c.data.datasets[name]:
                c.data.datasets[name].frame_gap = 0
        c.train.batch_size = int(t.batch_size)
        c.train.num_steps = int(t.num_steps)
        c.data.max_instances = int(config.proposals.max_instances)
    return c


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """``[..., H, W]`` bool -> ``[..., 4]`` float32 ``x0, y0, x1, y1`` pixel extents (x1 = last column + 1, the
    convention of the box coder's TO_REMOVE = 0); all-zero masks give all-zero boxes."""
    rows, cols = masks.any(axis=-1), masks.any(axis=-2)
    h, w = masks.shape[-2:]

    def extent(line: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        first = np.argmax(line, axis=-1)
        last = n - np.argmax(line[..., ::-1], axis=-1)
        return first, last

    y0, y1 = extent(rows, h)
    x0, x1 = extent(cols, w)
    boxes = np.stack([x0, y0, x1, y1], axis=-1).astype(np.float32)
    return np.where(masks.any(axis=(-2, -1))[..., None], boxes, 0.0).astype(np.float32)


def targets_from_batch(batch: dict) -> dict:
    """An input-pipeline batch of one-frame clips -> the Mask R-CNN's inputs.

    Args:
      batch: ``images [B, 1, H, W, 3] uint8``, ``masks [B, I, 1, H, W] bool``, ``instance_valid [B, I]``,
        ``category_ids [B, I] int32`` (``data.build_train_iterator``).

    Returns:
      ``images [B, H, W, 3] float32`` (mean-subtracted BGR), ``boxes [B, I, 4]``, ``classes [B, I] int32``
      (0 for an empty slot or an instance without pixels in the sample, e.g. cropped away by augmentation),
      ``masks [B, I, H, W] uint8``.
    """
    if batch["images"].shape[1] != 1:
        raise ValueError(f"expected one-frame clips, got images of shape {batch['images'].shape}")
    masks = batch["masks"][:, :, 0]
    present = batch["instance_valid"] & masks.any(axis=(2, 3))
    return {
        "images": preprocessing.normalize_images(batch["images"][:, 0]),
        "boxes": masks_to_boxes(masks),
        "classes": np.where(present, batch["category_ids"], 0).astype(np.int32),
        "masks": masks.astype(np.uint8),
    }


def maskrcnn_workdir(config, workdir: str) -> str:
    """Where the Mask R-CNN's checkpoints and logs go: ``workdir/maskrcnn``."""
    return os.path.join(os.path.abspath(workdir), "maskrcnn")


def train_maskrcnn(config: ml_collections.ConfigDict, workdir: str, *, batches=None, progress: bool = True) -> dict:
    """Trains (or resumes) the Mask R-CNN of ``config.proposals`` in ``workdir/maskrcnn``; returns its variables.

    ``batches(step) -> dict`` replaces the input pipeline (tests)."""
    import jax  # noqa: PLC0415 (slow imports: the config tools load this module too)
    import optax  # noqa: PLC0415
    from flax import traverse_util  # noqa: PLC0415

    from stemseg_jax.data.pipeline import build_train_iterator  # noqa: PLC0415
    from stemseg_jax.model import backbone_trainable  # noqa: PLC0415
    from stemseg_jax.proposals import build_maskrcnn, init_variables, loss_fn  # noqa: PLC0415
    from stemseg_jax.train.loop import run_training  # noqa: PLC0415
    from stemseg_jax.train.optim import build_optimizer  # noqa: PLC0415

    pcfg = config.proposals
    data_config = proposal_data_config(config)
    model = build_maskrcnn(pcfg.model)
    key = jax.random.PRNGKey(int(config.seed))
    variables = init_variables(model, key, (128, 128))  # parameter shapes do not depend on the image size
    if pcfg.init_checkpoint:
        variables = _merge_init(variables, pcfg.init_checkpoint)
    trainable = backbone_trainable(int(pcfg.model.freeze_at))
    flat = traverse_util.flatten_dict(variables["params"])
    mask = traverse_util.unflatten_dict({k: trainable(k) for k in flat})
    optimizer = build_optimizer(pcfg.train, mask)
    if float(pcfg.train.get("clip_grad_norm", 0.0)) > 0:
        optimizer = optax.chain(optax.clip_by_global_norm(float(pcfg.train.clip_grad_norm)), optimizer)

    if batches is None:
        batches = _pipeline_batches(build_train_iterator, data_config)

    def loss(params, rest, batch, rng):
        targets = {k: batch[k] for k in ("boxes", "classes", "masks")}
        return loss_fn(params, rest, model, batch["images"], targets, rng)

    out_dir = maskrcnn_workdir(config, workdir)
    return run_training(
        workdir=out_dir, name="maskrcnn", init_variables=variables, loss_fn=loss, batches=batches,
        optimizer=optimizer, num_steps=int(pcfg.train.num_steps), seed=int(config.seed),
        checkpoint_every=int(pcfg.train.checkpoint_every), log_every=int(pcfg.train.log_every),
        keep=int(pcfg.train.keep_checkpoints), trainable=trainable, progress=progress,
    )


def _pipeline_batches(build_train_iterator, data_config):
    """``batches(step)`` over the input pipeline: the iterator starts at the first step asked for (a resumed
    run continues the data order) and must then be read in order."""
    state: dict = {}

    def batches(step: int) -> dict:
        if "it" not in state:
            state["it"] = build_train_iterator(data_config, seed=int(data_config.seed), start_step=step)
            state["next"] = step
        if step != state["next"]:
            raise RuntimeError(f"Mask R-CNN batches must be read in order: asked for step {step}, "
                               f"expected {state['next']}")
        state["next"] += 1
        return targets_from_batch(next(state["it"]))

    return batches


def _merge_init(variables: dict, path: str) -> dict:
    """Starts from a converted Mask R-CNN (``proposals.init_checkpoint``: an orbax directory of our variables, e.g.
    written by ``tools/convert_torchvision_maskrcnn.py``); every tensor whose name and shape match is taken, the
    rest (e.g. class-specific output layers of a COCO model) keeps its initialisation, and both lists are logged."""
    from flax import traverse_util  # noqa: PLC0415

    from stemseg_jax.checkpoints import resolve_checkpoint_path, restore_model_variables  # noqa: PLC0415

    loaded = restore_model_variables(resolve_checkpoint_path(path, "config.proposals.init_checkpoint"),
                                     "config.proposals.init_checkpoint")
    ours, theirs = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(loaded)
    taken = [k for k in ours if k in theirs and tuple(theirs[k].shape) == tuple(ours[k].shape)]
    for k in taken:
        ours[k] = theirs[k]
    skipped = sorted("/".join(k) for k in ours if k not in set(taken))
    log.info("proposals.init_checkpoint %s: %d tensors taken, %d kept from initialisation%s", path, len(taken),
             len(skipped), f" (e.g. {skipped[:5]})" if skipped else "")
    if not taken:
        raise ValueError(f"config.proposals.init_checkpoint: {path} has no tensor of this Mask R-CNN's names/shapes")
    return traverse_util.unflatten_dict(ours)
