"""Training the re-id network (seed supplementary Sec. III): batch-hard triplet loss on P x K crops of
instances from a random video, SGD with momentum, 25k iterations, through ``train.loop.run_training``.

Settings live in ``config.reid`` (``default_reid_config``); the data are ``config.data.datasets``, read by
the same readers as STEm-Seg (only video records are used, see ``reid.data``). Checkpoints go to
``workdir/reid/checkpoints``.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from stemseg_jax.checkpoints import check_fits, flat_shapes, restore_model_variables
from stemseg_jax.data.readers import dataset_option, load_dataset
from stemseg_jax.preprocessing import normalize_images
from stemseg_jax.reid.data import TripletSampler
from stemseg_jax.reid.loss import batch_hard_triplet_loss
from stemseg_jax.reid.model import build_reid
from stemseg_jax.train.loop import newest_step_dir, restore_variables, run_training
from stemseg_jax.train.optim import learning_rate_schedule

log = logging.getLogger(__name__)

SUBDIR = "reid"


def default_reid_config() -> ml_collections.ConfigDict:
    """``config.reid``: the seed's re-id network and its training (choices the seed leaves open marked)."""
    c = ml_collections.ConfigDict()
    c.backbone_depth = 50
    c.backbone_width = 64
    c.hidden_dim = 1024  # Hermans' TriNet head
    c.embedding_dim = 128
    # From Mask R-CNN / STEm-Seg backbone weights the seed's ResNet-50 would be fine-tuned whole (Hermans
    # fine-tune everything); FrozenBN keeps the statistics fixed either way.
    c.freeze_at = 0
    c.dtype = "float32"
    c.conv2d_impl = "auto"
    # An orbax checkpoint (STEm-Seg train state or converted variables) whose ``backbone/body`` initialises the
    # ResNet; a ResNet-50 one is needed (the seed's is ResNet-50, STEm-Seg's ResNet-101). Empty: from scratch,
    # with the FrozenBN statistics calibrated on the first batch.
    c.init_checkpoint = ""
    c.crop_hw = (128, 128)
    c.crop_context = 1.25  # not in the seed: the crop covers the box scaled by this (some surroundings)
    c.box_jitter = 0.1
    c.flip = True
    c.P = 8  # instances per batch
    c.K = 4  # crops per instance
    c.margin = None  # None: soft margin (Hermans' best); a float: hinge with that margin
    c.num_steps = 25_000
    c.optimizer = "sgd"  # "sgd" (the seed's) or "adam" (Hermans'; momentum / nesterov unused)
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 1e-4  # not in the seed: the project's (official STEm-Seg) value
    # Not in the seed: gradients are clipped to this global norm (0: off). From scratch the FrozenBN-calibrated
    # ResNet's gradient norm is in the thousands at the first steps (tiny model, measured) and plain SGD
    # kills every ReLU of the head in one step.
    c.clip_grad_norm = 10.0
    c.learning_rate = 1e-3
    # Not in the seed ("exponential decay"): Hermans' shape, constant for 15k of 25k steps, then down 1000x.
    c.schedule = "exponential"
    c.decay_start = 15_000
    c.final_learning_rate = 1e-6
    c.checkpoint_every = 5000
    c.keep_checkpoints = 3
    c.log_every = 50
    c.seed = 0
    c.checkpoint = ""  # inference (RI-Tracker, UnOVOST): default the newest in workdir/reid/checkpoints
    return c


def tiny_reid_config() -> ml_collections.ConfigDict:
    """A re-id config whose step takes well under a second on 2 CPU cores (tests, demo)."""
    c = default_reid_config()
    c.backbone_width = 8
    # From scratch in a few steps: Adam at Hermans' rate fitted a fixed batch in 10 steps where clipped SGD
    # had only halved its loss after 20 (measured on the synthetic DAVIS set).
    c.optimizer = "adam"
    c.learning_rate = 3e-4
    c.crop_hw = (64, 64)
    c.P, c.K = 4, 2
    c.num_steps = 50
    c.decay_start = 40
    c.final_learning_rate = 3e-5
    c.checkpoint_every = 25
    c.log_every = 5
    return c


def reid_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config.reid`` with every field ``default_reid_config`` has (a config file may set only some)."""
    base = default_reid_config()
    own = config.get("reid", None)
    if own is not None:
        unknown = sorted(set(own.keys()) - set(base.keys()))
        if unknown:
            raise ValueError(f"config.reid has unknown field(s) {unknown}; known: {sorted(base.keys())}")
        base.update(own)
    return base


def load_video_records(config: ml_collections.ConfigDict) -> tuple[list, list[float]]:
    """The video records of every ``config.data.datasets`` entry (image datasets contribute none) and a
    sampling weight per record: its dataset's ``weight`` spread over the dataset's videos."""
    datasets = config.data.datasets
    if not datasets:
        raise ValueError("config.data.datasets is empty: no re-id training data")
    records, weights = [], []
    for name in sorted(datasets.keys()):
        ds = datasets[name]
        videos = [r for r in load_dataset(ds, f"data.datasets.{name}") if not r.is_image]
        if not videos:
            log.info("data.datasets.%s: image records only, not used for re-id training", name)
            continue
        records += videos
        weights += [float(dataset_option(ds, "weight")) / len(videos)] * len(videos)
    if not records:
        raise ValueError("config.data.datasets has no video dataset: re-id training needs videos")
    return records, weights


def init_reid_variables(cfg: ml_collections.ConfigDict, crops: np.ndarray, key: jax.Array) -> dict:
    """Fresh variables of ``build_reid(cfg)`` for uint8 ``crops [N, h, w, 3]``: the ResNet from
    ``cfg.init_checkpoint`` if set, else with its FrozenBN statistics calibrated on ``crops``."""
    x = normalize_images(jnp.asarray(crops), jnp)
    variables = jax.jit(build_reid(cfg).init)(key, x[:1])
    if cfg.init_checkpoint:
        return _merge_backbone(variables, cfg.init_checkpoint)
    calibrating = build_reid(cfg, calibrate_bn=True)
    _, updated = jax.jit(lambda v, x: calibrating.apply(v, x, mutable=["frozen_bn"]))(variables, x)
    return {**variables, **updated}


def _merge_backbone(variables: dict, path: str) -> dict:
    """``variables`` with ``body`` replaced by the ``backbone/body`` tensors of the checkpoint at ``path``."""
    theirs = traverse_util.flatten_dict(restore_model_variables(path, "reid.init_checkpoint"))
    ours = traverse_util.flatten_dict(variables)
    taken = 0
    for k in list(ours):
        if k[1] != "body":
            continue
        src = (k[0], "backbone") + k[1:]
        if src not in theirs:
            raise ValueError(f"reid.init_checkpoint {path}: {'/'.join(src)} missing (is it a ResNet-50 STEm-Seg "
                             "or converted checkpoint?)")
        if tuple(np.shape(theirs[src])) != tuple(ours[k].shape):
            raise ValueError(f"reid.init_checkpoint {path}: {'/'.join(src)} has shape {np.shape(theirs[src])}, "
                             f"the re-id ResNet expects {ours[k].shape} (reid.backbone_width / depth?)")
        ours[k] = jnp.asarray(theirs[src], ours[k].dtype)
        taken += 1
    log.info("reid: initialised %d ResNet tensors from %s", taken, path)
    return traverse_util.unflatten_dict(ours)


def trainable(cfg: ml_collections.ConfigDict):
    """``path -> bool`` over the re-id parameters: False for the ResNet stages before ``cfg.freeze_at`` (the
    stem is stage 0), which the ResNet already cuts from the gradient; this keeps weight decay off them."""
    freeze_at = int(cfg.freeze_at)

    def fn(path: tuple[str, ...]) -> bool:
        if path[0] != "body":
            return True
        block = path[1]
        stage = 0 if block == "stem" else int(block[len("layer") :].split("_")[0])
        return stage >= freeze_at

    return fn


def make_reid_loss_fn(cfg: ml_collections.ConfigDict):
    """``(params, rest, batch, key) -> (loss, metrics)`` for ``run_training``: batch ``crops`` uint8,
    ``labels`` int32."""
    model = build_reid(cfg)
    margin = None if cfg.margin is None else float(cfg.margin)

    def loss_fn(params, rest, batch, key):
        del key  # the augmentation is done on the host
        emb = model.apply({"params": params, **rest}, normalize_images(batch["crops"], jnp))
        return batch_hard_triplet_loss(emb, batch["labels"], margin)

    return loss_fn


def make_reid_optimizer(cfg: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of ``cfg`` (a ``config.reid``) and its learning-rate schedule (``train.optim``'s: constant
    for ``decay_start`` steps, then exponential down to ``final_learning_rate`` at ``num_steps``)."""
    schedule = learning_rate_schedule(cfg)
    clip = float(cfg.clip_grad_norm)
    if clip < 0:
        raise ValueError(f"reid.clip_grad_norm must be >= 0, got {cfg.clip_grad_norm!r}")
    if cfg.optimizer == "sgd":
        update = optax.sgd(schedule, momentum=float(cfg.momentum), nesterov=bool(cfg.nesterov))
    elif cfg.optimizer == "adam":
        update = optax.adam(schedule)
    else:
        raise ValueError(f"reid.optimizer must be 'sgd' or 'adam', got {cfg.optimizer!r}")
    # PyTorch's order: the gradient is clipped, then the optimizer adds the decay to it.
    parts = [optax.clip_by_global_norm(clip)] if clip > 0 else []
    parts.append(optax.add_decayed_weights(float(cfg.weight_decay)))
    return optax.chain(*parts, update), schedule


def make_sampler(config: ml_collections.ConfigDict, records=None, weights=None) -> TripletSampler:
    """The ``TripletSampler`` of ``config`` (records from ``config.data.datasets`` unless given)."""
    cfg = reid_section(config)
    if records is None:
        records, weights = load_video_records(config)
    return TripletSampler(records, int(cfg.P), int(cfg.K), tuple(cfg.crop_hw), int(cfg.seed), weights=weights,
                          context=float(cfg.crop_context), jitter=float(cfg.box_jitter), flip=bool(cfg.flip))


def train_reid(config: ml_collections.ConfigDict, workdir: str, *, records=None, progress: bool = True) -> str:
    """Trains (or resumes) the re-id network of ``config.reid`` on ``config.data.datasets``; returns the
    newest checkpoint's step directory under ``workdir/reid/checkpoints``. ``records`` replaces the readers
    (tests)."""
    cfg = reid_section(config)
    optimizer, schedule = make_reid_optimizer(cfg)
    sampler = make_sampler(config, records)
    # Initialised (and FrozenBN calibrated) on the batch of step 0 also when resuming: the restored state
    # replaces the values, and the shapes are the same.
    variables = init_reid_variables(cfg, sampler(0)["crops"], jax.random.PRNGKey(int(cfg.seed)))
    out = os.path.join(os.path.abspath(workdir), SUBDIR)
    run_training(
        workdir=out, name="reid", init_variables=variables, loss_fn=make_reid_loss_fn(cfg), batches=sampler,
        optimizer=optimizer, num_steps=int(cfg.num_steps), seed=int(cfg.seed),
        checkpoint_every=int(cfg.checkpoint_every), log_every=int(cfg.log_every), keep=int(cfg.keep_checkpoints),
        trainable=trainable(cfg), schedule=schedule, progress=progress,
    )
    return newest_step_dir(os.path.join(out, "checkpoints"))


def restore_reid(config: ml_collections.ConfigDict, workdir_or_path: str) -> dict:
    """The re-id variables at ``workdir_or_path``: a workdir of ``train_reid`` (its newest checkpoint), its
    ``reid`` or ``reid/checkpoints`` directory, or a step directory. Shapes are checked against
    ``config.reid``'s model."""
    path = os.path.abspath(workdir_or_path)
    if os.path.isdir(os.path.join(path, SUBDIR, "checkpoints")):
        path = os.path.join(path, SUBDIR)
    variables = restore_variables(path)
    cfg = reid_section(config)
    h, w = cfg.crop_hw
    expected = jax.eval_shape(build_reid(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3), jnp.float32))
    check_fits(flat_shapes(expected), flat_shapes(variables), f"re-id checkpoint {path}")
    return variables
