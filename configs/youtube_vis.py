"""YouTube-VIS 2019 (spec §2.7, §5.1, seed Sec. II).

Variants: official (the official 160k schedule), tiny, demo (train on the synthetic YouTube-VIS-format
data in $STEMSEG_DEMO_DATA, see tools/demo.sh; use with tiny), tfds (YouTube-VIS train / valid read through
tensorflow-datasets from $TFDS_DATA_DIR, packed there by ``tools/prepare_tfds.py --config
configs/youtube_vis.py --dataset youtube_vis --dataset val_dataset --data-dir $TFDS_DATA_DIR``), local
(train on one part of the train JSON and score AP on the held-out part, both written to
$YOUTUBE_VIS_LOCAL by ``tools/split_ytvis.py --json $YOUTUBE_VIS_DIR/train.json --out-dir
$YOUTUBE_VIS_LOCAL``; the official val ground truth is private).
"""

from stemseg_jax import config as base


def get_config(arg=None):
    variants = base.parse_variants(arg, ("official", "tiny", "demo", "tfds", "local"))
    if {"tfds", "local"} <= variants:
        raise ValueError("config variants tfds and local cannot be combined: pack the local split with "
                         "tools/prepare_tfds.py and set data.datasets.youtube_vis.split instead")
    c = base.base_config()
    c.name = "youtube_vis"
    m = c.model
    m.embedding_mode = "xyff"
    m.free_dim_stds = (0.3, 0.3)
    m.seediness_head = "embedding"
    m.use_semseg_head = True
    m.num_classes = 41  # background + 40 categories
    m.semseg_channels = (256, 256, 256, 256)

    d = c.data
    d.num_frames = 8
    d.min_dim, d.max_dim = 640, 1196
    d.frame_gap = 8
    d.datasets = dict(
        coco=base.dataset("coco", "$COCO_DIR", "train2017", 0.30, category_map="coco_to_ytvis"),
        pascal_voc=base.dataset("pascal_voc", "$PASCAL_VOC_DIR", "train", 0.10, category_map="voc_to_ytvis"),
        youtube_vis=base.dataset("ytvis", "$YOUTUBE_VIS_DIR", "train", 0.60),
    )
    d.val_dataset = base.dataset("ytvis", "$YOUTUBE_VIS_DIR", "valid")

    t = c.train  # seed: 150k iterations, decay from 60k to 1e-5
    t.num_steps, t.decay_start = 150_000, 60_000
    t.learning_rate, t.final_learning_rate = 1e-3, 1e-5
    if "official" in variants:  # youtube_vis.yaml: 160k, decay from 60k over 100k steps by 0.01
        t.num_steps = 160_000

    i = c.inference
    i.benchmark = "ytvis"
    i.frame_overlap = 4
    i.max_tracks = 10
    i.resize_embeddings = True
    if "tiny" in variants:
        c = base.make_tiny(c)
        c.model.semseg_channels = (32, 32, 32, 32)
    if "tfds" in variants:
        # root is the tfds data dir (the reader's data_dir); the packed format's options are set here
        # because the tfds format does not know them (ytvis duplicates single-instance clips).
        c.data.datasets.youtube_vis = base.dataset("tfds", "$TFDS_DATA_DIR", "train", 0.60,
                                                   builder="stemseg_videos", instance_duplication=True)
        c.data.val_dataset = base.dataset("tfds", "$TFDS_DATA_DIR", "valid", builder="stemseg_videos")
    if "local" in variants:
        # Both parts keep the train split's frames (train/JPEGImages); the held-out JSON is also the
        # ground truth that --mode evaluate scores (Benchmark.ground_truth reads gt_json).
        c.data.datasets.youtube_vis = base.dataset("ytvis", "$YOUTUBE_VIS_DIR", "train", 0.60,
                                                   annotations="$YOUTUBE_VIS_LOCAL/train.json")
        c.data.val_dataset = base.dataset("ytvis", "$YOUTUBE_VIS_DIR", "train",
                                          annotations="$YOUTUBE_VIS_LOCAL/held_out.json",
                                          gt_json="$YOUTUBE_VIS_LOCAL/held_out.json")
    if "demo" in variants:
        c.data.datasets = dict(youtube_vis=base.dataset("ytvis", "$STEMSEG_DEMO_DATA", "train", 1.0))
        c.data.val_dataset = base.dataset("ytvis", "$STEMSEG_DEMO_DATA", "valid",
                                          gt_json="$STEMSEG_DEMO_DATA/valid_gt.json")
        base.apply_demo_training(c)
    return c
