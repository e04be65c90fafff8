"""DAVIS 2017/2019 unsupervised layout: one folder of frames and one of indexed PNGs per sequence.

    <root>/JPEGImages/480p/<seq>/00000.jpg ...
    <root>/Annotations_unsupervised/480p/<seq>/00000.png ...   (pixel value = object id, 0 = background,
                                                                 255 = void -> ignore mask)
    <root>/ImageSets/2017/<split>.txt                          (one sequence name per line; the 2019
                                                                 lists are used for splits 2017 lacks)

The same layout serves "your own data" (a folder per video of frames plus indexed PNGs). Optional
config keys: ``images`` / ``annotations`` (folders, relative to root), ``resolution`` ("480p"),
``imageset`` (a split file; default ``ImageSets/2017/<split>.txt``, and with split "all" or no split
file every annotated sequence), ``sequences`` (explicit list), ``allow_unannotated`` (frames without a
PNG are unannotated instead of an error), ``instance_categories`` ({seq: {instance id: category}} or
a JSON file of that; default: every instance is category 1, DAVIS being class-agnostic),
``index_cache`` (see ``common.map_files``).

Instance presence per frame needs each PNG decoded once at load time (a few seconds for DAVIS);
``index_cache`` / ``$STEMSEG_CACHE_DIR`` keep that index between runs.
"""

from __future__ import annotations

import os

from stemseg_jax import io
from stemseg_jax.data.readers import common
from stemseg_jax.data.records import VideoRecord

VOID = 255


def _present_ids(path: str) -> list[int]:
    label = io.read_label_png(path)
    return [v for v in common.present_values(label) if v not in (0, VOID)]


def read(ds_cfg, field: str = "dataset") -> list[VideoRecord]:
    root = common.resolve_root(ds_cfg, field)
    split = str(common.cfg_get(ds_cfg, "split", ""))
    res = str(common.cfg_get(ds_cfg, "resolution", "480p"))
    img_key, ann_key = common.cfg_get(ds_cfg, "images", ""), common.cfg_get(ds_cfg, "annotations", "")
    images_dir = (
        common.resolve_under(root, img_key, f"{field}.images", is_dir=True)
        if img_key
        else common.first_existing(root, [f"JPEGImages/{res}", "JPEGImages"], "DAVIS frame folder", f"{field}.images")
    )
    ann_dir = (
        common.resolve_under(root, ann_key, f"{field}.annotations", is_dir=True)
        if ann_key
        else common.first_existing(
            root,
            [f"Annotations_unsupervised/{res}", f"Annotations/{res}", "Annotations"],
            "DAVIS annotation folder",
            f"{field}.annotations",
        )
    )
    sequences = _sequence_list(ds_cfg, root, split, ann_dir, field)
    allow_unannotated = bool(common.cfg_get(ds_cfg, "allow_unannotated", False))
    cat_spec = common.cfg_get(ds_cfg, "instance_categories", None)
    if isinstance(cat_spec, str) and cat_spec:
        cat_spec = common.load_json(common.resolve_under(root, cat_spec, f"{field}.instance_categories"), "categories")
    if cat_spec and not hasattr(cat_spec, "get"):
        raise ValueError(f"{field}.instance_categories: expected {{sequence: {{instance id: category}}}}, "
                         f"got {type(cat_spec).__name__}")  # fmt: skip

    per_seq = []
    all_pngs = []
    for seq in sequences:
        frames = common.list_frames(os.path.join(images_dir, seq), f"{field}: DAVIS sequence {seq!r}")
        seq_ann = os.path.join(ann_dir, seq)
        pngs = []
        for t, fp in enumerate(frames):
            png = os.path.join(seq_ann, os.path.splitext(os.path.basename(fp))[0] + ".png")
            if os.path.isfile(png):
                pngs.append(png)
            elif allow_unannotated:
                pngs.append(None)
            else:
                raise FileNotFoundError(
                    f"{png}: annotation PNG missing for frame {t} of sequence {seq!r} "
                    f"(set {field}.allow_unannotated=True if frames are annotated sparsely)"
                )
        per_seq.append((seq, frames, pngs))
        all_pngs += [p for p in pngs if p is not None]

    cache = common.index_cache_path(ds_cfg, "davis", root, split)
    present = dict(zip(all_pngs, common.map_files(all_pngs, _present_ids, cache)))

    records = []
    for seq, frames, pngs in per_seq:
        h, w = io.image_size(frames[0])
        frame_instances = tuple(frozenset(present[p]) if p else frozenset() for p in pngs)
        ids = sorted(set().union(*frame_instances))
        seq_cats = (cat_spec or {}).get(seq, {}) if cat_spec else {}
        if not hasattr(seq_cats, "get"):
            raise ValueError(f"{field}.instance_categories: sequence {seq!r} needs {{instance id: category}}, "
                             f"got {type(seq_cats).__name__}")  # fmt: skip
        categories = {}
        for iid in ids:
            cat = seq_cats.get(str(iid), seq_cats.get(iid, 1 if not cat_spec else None))
            if cat is None:
                raise ValueError(f"{field}.instance_categories: no category for instance {iid} of sequence {seq!r}")
            where = f"{field}.instance_categories (sequence {seq!r}, instance {iid})"
            categories[iid] = common.require_int(cat, where, "category", 1, common.MAX_ID)
        source = os.path.join(ann_dir, seq)  # not ``seq_ann``: that is the last sequence's of the loop above
        masks = common.LabelPngMaskSource(pngs, h, w, {VOID: -1}, True, source, seq)
        records.append(VideoRecord(seq, tuple(frames), h, w, categories, frame_instances, masks, False, source))
    return records


def _sequence_list(ds_cfg, root: str, split: str, ann_dir: str, field: str) -> list[str]:
    wanted = common.sequence_filter(ds_cfg)
    if wanted is not None:
        return sorted(wanted)
    imageset = common.cfg_get(ds_cfg, "imageset", "")
    if imageset:
        path = common.resolve_under(root, imageset, f"{field}.imageset", is_dir=False)
    else:
        path = os.path.join(root, "ImageSets", "2017", f"{split}.txt")
        if not os.path.isfile(path):  # DAVIS 2019 lists (test-dev, test-challenge)
            path2019 = os.path.join(root, "ImageSets", "2019", f"{split}.txt")
            path = path2019 if os.path.isfile(path2019) else path
        if split in ("", "all") or not os.path.isfile(path):
            if split not in ("", "all"):
                raise FileNotFoundError(
                    f"config field {field}.split={split!r}: split file {path} does not exist "
                    f"(use split 'all' for every sequence, or set {field}.imageset / {field}.sequences)"
                )
            return sorted(d for d in os.listdir(ann_dir) if os.path.isdir(os.path.join(ann_dir, d)))
    seqs = [line.strip() for line in io.read_text(path, "{path}:{line}").split("\n") if line.strip()]
    if not seqs:
        raise ValueError(f"split file {path} is empty")
    return seqs
