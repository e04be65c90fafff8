"""A tensorflow-datasets builder and random-access source for any dataset the readers understand.

``prepare(ds_cfg, data_dir)`` packs a dataset (a synthetic one, or DAVIS / YouTube-VIS / KITTI-MOTS
in their original layouts) into tfds ``array_record`` shards: one example per video, frames kept as
the original encoded JPEG/PNG bytes, masks as compressed COCO RLE. ``TfdsVideoSource`` reads it back
with random access (``len``, ``[i]``), which grain accepts as a data source.

This works without TensorFlow only because (1) image features are given file paths, so tfds stores
the bytes instead of calling ``tf.image.encode_*``, (2) masks are stored as RLE text, and (3) reading
uses tfds' data-source API over array_record, which decodes with Pillow. The tfds *catalog* builders
``youtube_vis`` and ``davis`` cannot be used without TensorFlow: they call ``tf.io.gfile`` and encode
``tfds.features.Video`` with TensorFlow, and the catalog's ``davis`` is the semi-supervised DAVIS-2017
set, not the unsupervised annotations STEm-Seg trains on. So those are read from their original
layouts by ``stemseg_jax.data.readers`` (and can be packed with ``prepare``).
"""

from __future__ import annotations

import json

import numpy as np

from stemseg_jax import io
from stemseg_jax.data.readers import load_dataset

BUILDER_NAME = "stemseg_videos"  # the builder's folder under ``data_dir``


def _tfds():
    import tensorflow_datasets as tfds  # imported lazily: ~1 s, and only this module needs it

    return tfds


def _example(record) -> dict:
    frames = list(range(record.num_frames))
    ids = list(record.instance_ids)
    masks, ignore = record.masks.load(frames, ids)
    rles = [{str(i): io.encode_rle(masks[k, t])["counts"] for k, i in enumerate(ids) if masks[k, t].any()}
            for t in frames]  # fmt: skip
    annotation = dict(
        categories={str(i): c for i, c in record.categories.items()},
        rles=rles,
        ignore=[io.encode_rle(ig)["counts"] if ig.any() else None for ig in ignore],
    )
    return dict(name=record.name, height=record.height, width=record.width, is_image=record.is_image,
                frames=list(record.frame_paths), annotation=json.dumps(annotation))  # fmt: skip


def make_builder(ds_cfg, data_dir: str):
    """A ``GeneratorBasedBuilder`` instance whose single split holds ``load_dataset(ds_cfg)``."""
    tfds = _tfds()
    split = str(ds_cfg.get("split", "train") or "train")

    class StemsegVideos(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        # No checksums file next to the code: without this tfds looks for one through the
        # ``importlib_resources`` backport, which is not installed.
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"stemseg-jax packing of a {ds_cfg['format']} dataset ({split})",
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
            return {split: self._generate_examples()}

        def _generate_examples(self):
            for k, record in enumerate(load_dataset(ds_cfg, f"tfds[{BUILDER_NAME}]")):
                yield k, _example(record)

    StemsegVideos.name = BUILDER_NAME
    return StemsegVideos(data_dir=data_dir, file_format="array_record")


def prepare(ds_cfg, data_dir: str) -> str:
    """Packs the dataset into ``data_dir``; returns the split name to pass to ``TfdsVideoSource``."""
    builder = make_builder(ds_cfg, data_dir)
    builder.download_and_prepare()
    return str(ds_cfg.get("split", "train") or "train")


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
