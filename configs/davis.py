"""DAVIS'19 Unsupervised (spec §2.7, §5.1, seed Sec. II).

Variants (``configs/davis.py:stage2,tiny``):
  stage2   — 16-frame clips with the whole backbone + FPN frozen, initialised from stage 1
  official — the official davis_1/davis_2 schedules instead of the seed's
  tiny     — narrow model and small frames for tests and the demo
  demo     — train on the synthetic DAVIS-format data in $STEMSEG_DEMO_DATA (tools/demo.sh); use with tiny
"""

from stemseg_jax import config as base


def get_config(arg=None):
    variants = base.parse_variants(arg, ("stage2", "official", "tiny", "demo"))
    c = base.base_config()
    c.name = "davis"
    m = c.model
    m.embedding_mode = "xyff"
    m.free_dim_stds = (0.3, 0.3)
    m.seediness_head = "separate"
    m.use_semseg_head = False
    m.num_classes = 2
    m.foreground_channel = False

    d = c.data
    d.num_frames = 8
    d.min_dim, d.max_dim = 736, 1248
    d.frame_gap = 16
    d.class_agnostic = True
    d.datasets = dict(
        coco=base.dataset("coco", "$COCO_DIR", "train2017", 0.25, category_map="coco_to_davis"),
        youtube_vis=base.dataset("ytvis", "$YOUTUBE_VIS_DIR", "train", 0.35, frame_gap=8),
        davis=base.dataset("davis", "$DAVIS_DIR", "train", 0.30),
        pascal_voc=base.dataset("pascal_voc", "$PASCAL_VOC_DIR", "train", 0.10, category_map="voc_to_davis"),
    )
    d.val_dataset = base.dataset("davis", "$DAVIS_DIR", "val")

    # Seed: 60k iterations, constant 1e-3 then exponential decay to 1e-5 from 20k.
    t = c.train
    t.num_steps, t.decay_start = 60_000, 20_000
    t.learning_rate, t.final_learning_rate = 1e-3, 1e-5
    if "official" in variants:  # davis_1.yaml: 50k, decay from 40k over 10k steps by 0.1
        t.num_steps, t.decay_start, t.final_learning_rate = 50_000, 40_000, 1e-4

    i = c.inference
    i.benchmark = "davis"
    i.frame_overlap = 6
    i.max_tracks = 20
    i.min_seediness_prob = 0.8

    if "stage2" in variants:
        d.num_frames = 16
        d.frame_gap = 16
        d.datasets.youtube_vis.frame_gap = 16
        m.freeze_backbone = True
        # davis_2.yaml: 10k steps at a constant 1e-3 (the seed gives no second-stage schedule).
        t.schedule, t.num_steps, t.decay_start = "constant", 10_000, 10_000
        t.final_learning_rate = t.learning_rate
        t.init_checkpoint = "$WORKDIR_STAGE1"
    if "tiny" in variants:
        c = base.make_tiny(c)
    if "demo" in variants:
        # DAVIS alone: the official mix supervises the seediness background through COCO / YouTube-VIS / VOC
        # clips, which the demo does not have, so DAVIS background is not turned into ignore here.
        c.data.datasets = dict(
            davis=base.dataset("davis", "$STEMSEG_DEMO_DATA", "train", 1.0, background_as_ignore=False)
        )
        c.data.val_dataset = base.dataset("davis", "$STEMSEG_DEMO_DATA", "val")
        base.apply_demo_training(c)
    return c

