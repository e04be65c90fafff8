"""Packs datasets the readers understand into the tensorflow-datasets builder ``stemseg_videos``.

    # the train and valid entries of a config (their config fields are used as they are, $VARS expanded):
    python tools/prepare_tfds.py --config configs/youtube_vis.py --dataset youtube_vis --dataset val_dataset \\
        --data-dir $TFDS_DATA_DIR
    # one dataset given by its format, root and split:
    python tools/prepare_tfds.py --format kitti_mots --root $KITTI_MOTS_DIR --split train --data-dir DIR

Each packed split is named after the entry's ``split`` and read back with ``format: "tfds"``
(``stemseg_jax/data/readers/tfds_format.py``), e.g. ``--config configs/youtube_vis.py:tfds``.
"""

from __future__ import annotations

import argparse
import sys
import time

from stemseg_jax.config import dataset, load_config_file
from stemseg_jax.data import tfds_source


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the tfds data dir to write into")
    p.add_argument("--config", help="a config file[:variants]; with --dataset")
    p.add_argument("--dataset", action="append", default=[],
                   help="a key of config.data.datasets, or val_dataset (repeatable)")  # fmt: skip
    p.add_argument("--format", help="a reader format (without --config)")
    p.add_argument("--root", help="the dataset root (without --config)")
    p.add_argument("--split", default="train", help="the split to read and the packed split's name")
    return p.parse_args(argv)


def dataset_entries(args) -> dict:
    """``{split name: dataset entry}`` from the command line; a clear error for a bad combination."""
    if args.config:
        if args.format or args.root:
            raise ValueError("give either --config with --dataset, or --format with --root, not both")
        if not args.dataset:
            raise ValueError("--config needs at least one --dataset (a key of config.data.datasets, or val_dataset)")
        config = load_config_file(args.config)
        entries = {}
        for name in args.dataset:
            if name == "val_dataset":
                entry = config.data.val_dataset
            elif name in config.data.datasets:
                entry = config.data.datasets[name]
            else:
                raise ValueError(f"--dataset {name!r}: not in config.data.datasets {sorted(config.data.datasets)} "
                                 "nor val_dataset")  # fmt: skip
            split = str(entry.get("split", "train") or "train")
            if split in entries:
                raise ValueError(f"--dataset {name!r}: split {split!r} is already given by another --dataset")
            entries[split] = entry
        return entries
    if not (args.format and args.root):
        raise ValueError("give --config with --dataset, or --format with --root")
    return {args.split: dataset(args.format, args.root, args.split)}


def main(argv=None) -> int:
    args = _parse(argv)
    try:
        entries = dataset_entries(args)
        start = time.time()
        splits = tfds_source.prepare_splits(entries, args.data_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"packed splits {splits} into {args.data_dir}/{tfds_source.BUILDER_NAME} in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
