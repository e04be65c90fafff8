"""A tensorflow-datasets builder and random-access source for any dataset the readers understand.

``prepare(ds_cfg, data_dir)`` (or ``prepare_splits({split: ds_cfg}, data_dir)``, several splits in one
builder) packs a dataset (a synthetic one, or DAVIS / YouTube-VIS / KITTI-MOTS / COCO in their
original layouts) into tfds ``array_record`` shards: one example per video, frames kept as the
original encoded JPEG/PNG bytes, masks as compressed COCO RLE, with the record's frame names,
per-frame instance lists and order in the annotation text. ``format: "tfds"``
(``stemseg_jax.data.readers.tfds_format``) reads it back into ``VideoRecord``s for training and
evaluation; ``TfdsVideoSource`` reads it with random access (``len``, ``[i]``, decoded arrays).

This works without TensorFlow only because (1) image features are given file paths, so tfds stores
the bytes instead of calling ``tf.image.encode_*``, (2) masks are stored as RLE text, and (3) reading
uses tfds' data-source API over array_record, which decodes with Pillow. Which tfds *catalog*
builders can be used without TensorFlow, and for what, is in ``readers/tfds_format.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from stemseg_jax import io
from stemseg_jax.data.readers import load_dataset
from stemseg_jax.data.readers.tfds_format import BUILDER_NAME, lazy_tfds

_tfds = lazy_tfds


def _example(record, index: int) -> dict:
    frames = list(range(record.num_frames))
    ids = list(record.instance_ids)
    masks, ignore = record.masks.load(frames, ids)
    rles = [{str(i): io.encode_rle(masks[k, t])["counts"] for k, i in enumerate(ids) if masks[k, t].any()}
            for t in frames]  # fmt: skip
    annotation = dict(
        categories={str(i): c for i, c in record.categories.items()},
        rles=rles,
        ignore=[io.encode_rle(ig)["counts"] if ig.any() else None for ig in ignore],
        # What the reader needs to give back the same record: its position (shards are shuffled), the
        # frame file names (result files are named after them) and which instance the annotation lists
        # in which frame (an instance can be listed with an empty mask).
        index=index,
        frame_names=[os.path.basename(p) for p in record.frame_paths],
        frame_instances=[sorted(f) for f in record.frame_instances],
        source=record.source,
    )
    return dict(name=record.name, height=record.height, width=record.width, is_image=record.is_image,
                frames=list(record.frame_paths), annotation=json.dumps(annotation))  # fmt: skip


def make_builder(ds_cfg, data_dir: str, splits: Mapping | None = None):
    """A ``GeneratorBasedBuilder`` instance whose split holds ``load_dataset(ds_cfg)``; with ``splits``
    (split name -> dataset entry) one split per entry instead."""
    tfds = _tfds()
    if splits is None:
        splits = {str(ds_cfg.get("split", "train") or "train"): ds_cfg}
    formats = sorted({str(c["format"]) for c in splits.values()})

    # skip_registration: a builder class per call (tests and tools build several in one process).
    class StemsegVideos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        # No checksums file next to the code: without this tfds looks for one through the
        # ``importlib_resources`` backport, which is not installed.
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"stemseg-jax packing of {'/'.join(formats)} data ({', '.join(splits)})",
                features=tfds.features.FeaturesDict({
                    "name": tfds.features.Text(),
                    "height": np.int32,
                    "width": np.int32,
                    "is_image": np.bool_,
                    "frames": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3))),
                    "annotation": tfds.features.Text(),
                }),  # fmt: skip
            )

        def _split_generators(self, dl_manager):
            return {name: self._generate_examples(name, cfg) for name, cfg in splits.items()}

        def _generate_examples(self, split, cfg):
            for k, record in enumerate(load_dataset(cfg, f"tfds[{BUILDER_NAME}/{split}]")):
                yield k, _example(record, k)

    StemsegVideos.name = BUILDER_NAME
    return StemsegVideos(data_dir=data_dir, file_format="array_record")


def prepare_splits(splits: Mapping, data_dir: str) -> list[str]:
    """Packs ``{split name: dataset entry}`` into ``data_dir/stemseg_videos/1.0.0``; returns the split names.

    A data dir that already holds a packing is reused when it has every requested split, and refused
    otherwise (tfds would silently keep the old one): use another ``data_dir``.
    """
    if not splits:
        raise ValueError("prepare_splits: no split to pack")
    builder = make_builder(None, data_dir, splits)
    if os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json")):
        have = set(builder.info.splits)
        missing = sorted(set(splits) - have)
        if missing:
            raise ValueError(f"{builder.data_dir} already holds a packing with splits {sorted(have)}, not {missing}; "
                             "prepare into another data_dir (or remove that folder)")  # fmt: skip
    builder.download_and_prepare()
    return list(splits)


def prepare(ds_cfg, data_dir: str) -> str:
    """Packs the dataset into ``data_dir``; returns the split name (for ``TfdsVideoSource`` and ``format: tfds``)."""
    split = str(ds_cfg.get("split", "train") or "train")
    prepare_splits({split: ds_cfg}, data_dir)
    return split


class TfdsVideoSource:
    """Random-access source over a prepared split: ``source[i]`` is one decoded video.

    Each item: ``name``, ``frames [T, H, W, 3] uint8 BGR`` (the convention of ``io.read_image``),
    ``masks [I, T, H, W] bool``, ``ignore [T, H, W] bool``, ``instance_ids [I]``, ``categories [I]``,
    ``is_image``.
    """

    def __init__(self, data_dir: str, split: str):
        tfds = _tfds()
        builder = tfds.builder_from_directory(f"{data_dir}/{BUILDER_NAME}/1.0.0")
        self._source = builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        ex = self._source[index]
        h, w = int(ex["height"]), int(ex["width"])
        ann = json.loads(ex["annotation"])
        ids = sorted(int(i) for i in ann["categories"])
        frames = np.stack([np.asarray(f)[..., ::-1] for f in ex["frames"]])  # tfds decodes RGB
        t_count = frames.shape[0]
        masks = np.zeros((len(ids), t_count, h, w), bool)
        ignore = np.zeros((t_count, h, w), bool)
        name = ex["name"].decode() if isinstance(ex["name"], bytes) else str(ex["name"])
        for t in range(t_count):
            for k, iid in enumerate(ids):
                counts = ann["rles"][t].get(str(iid))
                if counts is not None:
                    masks[k, t] = io.decode_segmentation(counts, h, w, f"tfds {name} frame {t} instance {iid}")
            if ann["ignore"][t] is not None:
                ignore[t] = io.decode_segmentation(ann["ignore"][t], h, w, f"tfds {name} frame {t} ignore")
        return dict(name=name, frames=frames, masks=masks, ignore=ignore, instance_ids=np.array(ids, np.int64),
                    categories=np.array([ann["categories"][str(i)] for i in ids], np.int64),
                    is_image=bool(ex["is_image"]))  # fmt: skip
