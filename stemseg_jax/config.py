"""The configuration schema shared by every config file in ``configs/``.

A config is an ``ml_collections.ConfigDict``. ``base_config()`` holds every field with the
official ``defaults.yaml`` value (spec references in comments); the dataset configs override what
their recipes change, and ``make_tiny`` shrinks a config for tests and the demo.
"""

from __future__ import annotations

import ml_collections

# Embedding mixing functions (seed Table I, spec §3.2): name -> (coordinate channels, free dims).
# Channel order is coordinates first (t, y, x) then free dims.
EMBEDDING_MODES = {
    "xy": (("y", "x"), 0),
    "xyt": (("t", "y", "x"), 0),
    "xyf": (("y", "x"), 1),
    "xytf": (("t", "y", "x"), 1),
    "xyff": (("y", "x"), 2),
    "xytff": (("t", "y", "x"), 2),
    "xyfff": (("y", "x"), 3),
}


def embedding_dims(mode: str) -> tuple[int, int, int]:
    """Returns ``(E, V, n_free)``: embedding dims, learned bandwidth dims, fixed free dims."""
    if mode not in EMBEDDING_MODES:
        raise ValueError(f"unknown embedding mode {mode!r}; expected one of {sorted(EMBEDDING_MODES)}")
    coords, n_free = EMBEDDING_MODES[mode]
    return len(coords) + n_free, len(coords), n_free


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "stemseg"
    c.seed = 42
    c.method = "stemseg"  # the video segmenter of --mode evaluate / infer: a key of methods.METHODS

    # ---------------------------------------------------------------- model (spec §1-3)
    m = c.model = ml_collections.ConfigDict()
    m.backbone_depth = 101  # 50 or 101
    m.backbone_width = 64  # bottleneck width of stage 1; 64 for the real ResNet
    m.fpn_channels = 256
    m.freeze_at = 2  # stem and stage 1 frozen (FREEZE_AT_STAGE = 2)
    m.freeze_backbone = False  # davis stage 2: whole backbone + FPN frozen
    m.embedding_mode = "xyt"
    m.free_dim_stds = ()  # one std per free dim; fixed bandwidth 1 / std**2
    m.time_scale = 1.0  # the official buffer's value (TIME_SCALE: 0.1 is never read, spec §3.1)
    m.seediness_head = "embedding"  # "embedding" (conv on the embedding decoder) or "separate"
    m.embedding_channels = (256, 256, 128, 128)  # INTER_CHANNELS per decoder
    m.seediness_channels = (256, 256, 128, 128)
    m.semseg_channels = (256, 256, 128, 128)
    m.use_semseg_head = True
    m.num_classes = 3  # including background (class 0)
    m.foreground_channel = True
    m.gn_groups = 32
    # "shifted2d" computes each 3x3x3 conv as three time-shifted 2D convs (faster on XLA:CPU).
    m.conv3d_impl = "shifted2d"
    # "cpu": 1x1 convs as matmuls, materialised residual stream and gradients, fusion boundaries XLA:CPU
    # needs (docs/BENCHMARKS.md, "Training against PyTorch"); "xla": plain lax convolutions;
    # "auto": "cpu" on a CPU backend.
    m.conv2d_impl = "auto"
    m.dtype = "float32"  # activation dtype: float32 or bfloat16
    m.remat = False  # rematerialise decoder blocks in the backward pass

    # ---------------------------------------------------------------- losses (spec §4)
    lo = c.loss = ml_collections.ConfigDict()
    lo.weight = 1.0
    lo.w_lovasz = 1.0
    lo.w_smoothness = 10.0
    lo.w_seediness = 1.0
    lo.w_semseg = 1.0
    lo.w_foreground = 1.0
    # QUIRK (spec §4.4): the official semantic CE ignores the ignore mask. False honours it.
    lo.semseg_ce_ignore_quirk = False
    # How the full-resolution masks become targets at the output stride (losses/targets.py):
    # "official" ANDs each block's central 2x2 pixels (spec §4.1 QUIRK: every object shrinks by about an
    # input pixel per side, and masks learnt from it do too); "area" keeps a pixel when half its block is
    # set and gives the semantic and foreground terms each class's share of the block as a soft target.
    lo.target_rule = "official"

    # ---------------------------------------------------------------- data (spec §5, §7)
    d = c.data = ml_collections.ConfigDict()
    d.num_frames = 8
    d.min_dim = 800
    d.max_dim = 1333
    d.max_instances = 16  # padded instance slots per clip
    # Train on random windows this many pixels wide (after resizing and padding; a multiple of 32) of each
    # clip instead of whole frames; 0 = whole frames. Windows are never narrower than the padded height: the
    # coordinate grid's scale follows the shorter side (model/heads.py), so a window then sees objects at
    # the scale of whole-frame inference, for a fraction of the step's cost. Portrait clips stay whole.
    d.crop_width = 0
    # name -> dict(format=..., root=..., split=..., weight=..., ...) (``dataset()``). Filled by the dataset configs.
    d.datasets = ml_collections.ConfigDict()
    d.val_dataset = ml_collections.ConfigDict()
    d.frame_gap = 8
    d.augmentation = "seed"  # "seed" (supplementary) or "official" (spec §5.5)
    d.video_flip = True  # seed: clip-level horizontal flip for real videos; official: False
    d.instance_duplication = True
    d.subsample = "random"  # "random" or "first" (official QUIRK, spec §5.2)
    d.num_workers = 2
    d.prefetch = 2
    d.class_agnostic = False

    # ---------------------------------------------------------------- training (seed Sec. II)
    t = c.train = ml_collections.ConfigDict()
    t.batch_size = 2
    t.num_steps = 100_000
    t.learning_rate = 1e-3
    t.final_learning_rate = 1e-5
    t.decay_start = 40_000
    t.schedule = "exponential"  # "exponential" or "constant"
    t.optimizer = "sgd"  # "sgd" (seed, official) or "adamw" (train.optimizer docs in train/optim.py)
    t.momentum = 0.9
    t.nesterov = True
    t.weight_decay = 1e-4
    t.checkpoint_every = 10_000
    t.keep_checkpoints = 3
    t.log_every = 20
    t.image_summary_every = 1000
    t.init_checkpoint = ""  # orbax checkpoint (second stages, converted backbones)
    t.init_backbone_only = False
    t.distributed = False  # call jax.distributed.initialize() (multi-host)
    # Not in the seed or the official code: > 0 keeps an exponential moving average of the parameters
    # (decay min(ema_decay, (1 + step) / (10 + step))) in the train state, which inference then uses.
    t.ema_decay = 0.0

    # ---------------------------------------------------------------- inference (spec §6)
    i = c.inference = ml_collections.ConfigDict()
    i.frame_overlap = 4
    i.min_seediness_prob = 0.8
    i.primary_prob_threshold = 0.5
    i.secondary_prob_threshold = 0.3
    i.max_instances_per_clip = 20
    i.seediness_fg_threshold = 0.25  # fg mask without a semseg head (DAVIS)
    # QUIRKs (spec §6.4): the official clusterer uses exp(-0.5*sqrt(d2)) and the farthest cluster.
    i.distance = "squared"  # "squared" (training's definition) or "sqrt" (official)
    i.secondary_assignment = "nearest"  # "nearest" or "farthest" (official)
    # Cluster each object class's foreground on its own (the semantic head's argmax over object classes);
    # not official. See inference/clustering.py: cluster_clip_per_class.
    i.cluster_per_class = False
    i.resize_embeddings = False
    i.min_dim = 0  # 0: same as data.min_dim
    i.max_dim = 0
    i.max_tracks = 1000
    i.benchmark = "kitti_mots"
    i.kitti_postprocess = True
    # Multiplies the post-processing's minimum detection areas (pixels of KITTI's ~375x1242 frames).
    i.kitti_min_area_scale = 1.0
    i.input = ""  # --mode infer: a video file or frame folder
    i.checkpoint = ""  # defaults to the newest checkpoint in --workdir
    i.use_ema = True  # the train state's moving-average parameters when it has them (train.ema_decay)
    return c


def make_tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config so one forward + backward runs in seconds on 2 CPU cores.

    Same topology as the full model (so every code path runs), narrow ResNet-50, small decoders and
    small frames. GroupNorm keeps 32 groups where channels allow; ``gn_groups`` drops to 8.
    """
    c = c.copy_and_resolve_references()
    c.model.backbone_depth = 50
    c.model.backbone_width = 8
    c.model.fpn_channels = 32
    c.model.embedding_channels = (32, 32, 16, 16)
    c.model.seediness_channels = (32, 32, 16, 16)
    c.model.semseg_channels = (32, 32, 16, 16)
    c.model.gn_groups = 8
    c.data.min_dim = 96
    c.data.max_dim = 160
    c.data.max_instances = 8
    c.train.checkpoint_every = 200
    c.train.log_every = 10
    c.train.image_summary_every = 200
    return c


def check_values(c: ml_collections.ConfigDict) -> None:
    """Fails with one message naming the first field whose value cannot work (a count that must be at least
    1, a decay outside [0, 1)), so that a typo stops a run before it creates anything."""
    for field in ("train.batch_size", "train.num_steps", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.log_every", "data.num_frames", "data.max_instances"):
        section, name = field.split(".")
        value = c[section][name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{field} must be an integer >= 1, got {value!r}")
    if not 0.0 <= float(c.train.ema_decay) < 1.0:
        raise ValueError(f"config.train.ema_decay must be in [0, 1), got {c.train.ema_decay!r}")


def parse_variants(arg: str | None, allowed: tuple[str, ...]) -> set[str]:
    """Parses ``configs/x.py:a,b`` variant strings; an unknown variant is a clear error."""
    variants = {v.strip() for v in (arg or "").split(",") if v.strip()}
    unknown = variants - set(allowed)
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; this config accepts {list(allowed)}")
    return variants


def dataset(fmt: str, root: str, split: str, weight: float = 1.0, **extra) -> ml_collections.ConfigDict:
    """One entry of ``config.data.datasets``: a reader format, its root directory, split and weight."""
    return ml_collections.ConfigDict(dict(format=fmt, root=root, split=split, weight=weight, **extra))


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:variants]`` the way ``--config`` does (for tools and tests)."""
    import importlib.util
    import os

    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def apply_demo_training(c: ml_collections.ConfigDict) -> None:
    """Training settings of the ``demo`` variants (``tools/demo.sh``): a ``:tiny`` model trained from scratch
    for minutes on synthetic data (measurements behind each setting: docs/BENCHMARKS.md)."""
    c.data.num_workers = 1
    # From scratch: a frozen stem and stage 1 would stay at their random initialisation.
    c.model.freeze_at = 0
    # The synthetic frames' native size (~128x256); at 96x160 objects are 4-6 px at the output stride.
    c.data.min_dim, c.data.max_dim = 128, 256
    c.inference.min_dim, c.inference.max_dim = 128, 256
    # The synthetic videos hold at most 4 objects (``synthetic.Knobs.max_objects``): more slots only cost loss work.
    c.data.max_instances = 4
    # About 15 minutes of training on the 2-core development machine, decaying over the last third.
    c.train.num_steps, c.train.decay_start = 2400, 1600
    # From scratch, AdamW matched or beat the best SGD rate (3e-2 / 2e-2) on all three demo formats.
    c.train.optimizer = "adamw"
    c.train.learning_rate, c.train.final_learning_rate = 1e-3, 1e-4
    # The official AND rule shrinks every small synthetic object by a pixel per side (loss.target_rule).
    c.loss.target_rule = "area"
    c.train.checkpoint_every = 500
    c.train.log_every = 25
