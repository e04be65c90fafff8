"""The seed's proposal-based baselines (supplementary Sec. III, V): Mask R-CNN proposals linked by a tracker.

Variants (``configs/maskrcnn.py:davis,tiny,demo``):
  davis | youtube_vis | kitti — the benchmark (its data mixture, classes, inference and metric; default davis)
  tiny  — narrow Mask R-CNN / re-id networks and small frames (tests, the demo comparison)
  demo  — the benchmark config's synthetic demo data ($STEMSEG_DEMO_DATA); use with tiny

``--config.method`` picks the tracker: of_tracker (default for DAVIS and YouTube-VIS), ri_tracker, unovost
(default for KITTI-MOTS, the seed's Sec. V comparison). ``--mode train`` trains what the method needs: the
Mask R-CNN into ``workdir/maskrcnn`` (seed: 120k iterations, SGD momentum 0.9, 1e-3 with exponential decay, on
the benchmark's STEm-Seg mixture), and for ri_tracker / unovost the re-id network into ``workdir/reid`` (25k
iterations, batch-hard triplet loss). ``--config.proposals.dir=DIR`` uses precomputed proposals instead
(``stemseg_jax/tracking/proposals.py`` documents the per-video JSON, e.g. from a Detectron2 model).
"""

import dataclasses
import os

import ml_collections

from stemseg_jax import config as base
from stemseg_jax.config import load_config_file

BENCHMARKS = {"davis": "davis.py", "youtube_vis": "youtube_vis.py", "kitti": "kitti.py"}
DEFAULT_METHOD = {"davis": "of_tracker", "youtube_vis": "of_tracker", "kitti": "unovost"}


def get_config(arg=None):
    from stemseg_jax.proposals.maskrcnn import default_config, tiny_config  # noqa: PLC0415 (flax import)
    from stemseg_jax.reid.train import default_reid_config, tiny_reid_config  # noqa: PLC0415
    from stemseg_jax.tracking.unovost import UnOVOSTParams  # noqa: PLC0415

    variants = base.parse_variants(arg, (*BENCHMARKS, "tiny", "demo"))
    chosen = sorted(variants & set(BENCHMARKS))
    if len(chosen) > 1:
        raise ValueError(f"configs/maskrcnn.py: choose one benchmark variant, got {chosen}")
    bench = chosen[0] if chosen else "davis"
    here = os.path.dirname(os.path.abspath(__file__))
    passed = ",".join(v for v in ("tiny", "demo") if v in variants)
    c = load_config_file(os.path.join(here, BENCHMARKS[bench]) + (f":{passed}" if passed else ""))
    c.name = f"maskrcnn_{bench}"
    c.method = DEFAULT_METHOD[bench]
    tiny = "tiny" in variants

    p = c.proposals = ml_collections.ConfigDict()
    # Same classes as the benchmark's STEm-Seg model (class-agnostic "object" for DAVIS), background included.
    p.model = tiny_config(int(c.model.num_classes)) if tiny else default_config()
    p.model.num_classes = int(c.model.num_classes)
    if tiny:
        # The tiny configs' frames are ~100-160 px: objects of 10-80 px, below the full anchors' 32-512.
        p.model.anchor_sizes = (8, 16, 32, 64, 128)
    p.train = ml_collections.ConfigDict()
    t = p.train
    t.batch_size = 2
    t.num_steps = 120_000
    # Seed: 1e-3 "with exponential decay" (from the start; to 1e-5 at the end: the seed gives no final rate).
    t.schedule = "exponential"
    t.learning_rate = 1e-3
    t.final_learning_rate = 1e-5
    t.decay_start = 0
    t.optimizer = "sgd"
    t.momentum = 0.9
    t.nesterov = False
    t.weight_decay = 1e-4
    # Not in the seed: 0 = off. From random weights (tiny, demo) the first RPN gradients are large
    # (global norm ~100) and plain SGD diverges; clipping lets the tiny networks train.
    t.clip_grad_norm = 0.0
    t.checkpoint_every = 10_000
    t.keep_checkpoints = 3
    t.log_every = 20
    p.max_instances = 32  # instances per training image (more are dropped, largest kept by the pipeline)
    p.init_checkpoint = ""  # e.g. a torchvision COCO Mask R-CNN converted with tools/convert_torchvision_maskrcnn.py
    p.checkpoint = ""  # inference: default the newest in workdir/maskrcnn/checkpoints
    p.dir = ""  # precomputed proposals (one <video>.json per video) instead of running the Mask R-CNN
    p.save_dir = ""  # write each video's proposals there (to reuse them with another tracker)
    p.min_score = 0.5  # detections below this are not proposals

    c.reid = tiny_reid_config() if tiny else default_reid_config()

    tr = c.tracker = ml_collections.ConfigDict()
    tr.flow = "dis"  # stemseg_jax.tracking.FLOWS (the seed used PWC-Net)
    tr.of_iou_threshold = 0.1
    tr.ri_max_distance = 1.0  # between L2-normalised embeddings (so in [0, 2])
    tr.ri_max_gap = 5
    tr.unovost = ml_collections.ConfigDict(dataclasses.asdict(UnOVOSTParams()))

    if tiny:
        # As STEm-Seg's demo: from random weights AdamW learns in minutes where the seed's SGD needs far longer
        # (SGD at 1e-2 with clipping: after 1500 steps every detection scored the same 0.15, J&F 0.11 with the
        # OF-Tracker; AdamW at 1e-3: J&F 0.29 after 600 steps; docs/BENCHMARKS.md "Baselines").
        t.optimizer, t.learning_rate, t.final_learning_rate, t.clip_grad_norm = "adamw", 1e-3, 1e-5, 10.0
        t.decay_start = 0
        t.checkpoint_every, t.log_every = 200, 10
    if "demo" in variants:
        t.num_steps, t.decay_start = 1500, 1000
    return c
