"""Writes a synthetic dataset in a real on-disk format (see ``stemseg_jax/data/synthetic.py``).

    python tools/make_synthetic_dataset.py --format davis --out /tmp/synth_davis --seed 0
    python tools/make_synthetic_dataset.py --format kitti_mots --out DIR --num_train 4 --max_objects 3

Every field of ``synthetic.Knobs`` is a flag (``--object_size 0.3,0.5`` for tuples).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from stemseg_jax.data import synthetic


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, choices=synthetic.FORMATS)
    p.add_argument("--out", required=True, help="output directory (the dataset root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_train", type=int, default=8, help="train videos (images for coco)")
    p.add_argument("--num_val", type=int, default=3, help="val videos (images for coco)")
    p.add_argument("--num_frames", type=int, default=24, help="frames per video")
    p.add_argument("--num_val_frames", type=int, default=None, help="frames per val video (default: --num_frames)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    for f in dataclasses.fields(synthetic.Knobs):
        kind = type(f.default)
        if kind is tuple:
            p.add_argument(f"--{f.name}", type=lambda s: tuple(float(x) for x in s.split(",")), default=None,
                           help=f"comma-separated, default {','.join(map(str, f.default))}")  # fmt: skip
        else:
            p.add_argument(f"--{f.name}", type=kind, default=None, help=f"default {f.default}")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(synthetic.Knobs)}
    knobs = {k: v for k, v in knobs.items() if v is not None}
    start = time.time()
    summary = synthetic.generate(
        args.format, args.out, args.seed, num_train=args.num_train, num_val=args.num_val,
        num_frames=args.num_frames, num_val_frames=args.num_val_frames, height=args.height, width=args.width, **knobs,
    )  # fmt: skip
    print(json.dumps({k: summary[k] for k in ("root", "format", "splits", "val_gt")}, indent=1))
    print(f"wrote {args.format} dataset in {time.time() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
