"""Converts an official STEm-Seg PyTorch checkpoint into an orbax checkpoint of Flax variables.

Full model (inference, or a second training stage):
  python tools/convert_official_checkpoint.py --config configs/davis.py --input davis.pth --output ckpt/davis
Backbone only (``train.init_checkpoint`` with ``train.init_backbone_only``):
  python tools/convert_official_checkpoint.py --config configs/kitti.py --backbone-only \
      --input mask_rcnn_R_101_FPN_backbone.pth --output ckpt/backbone_r101

Needs PyTorch on the CPU to read .pth files (pip install torch==2.13.0).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stemseg_jax.config import load_config_file  # noqa: E402
from stemseg_jax.convert import CheckpointMismatchError, convert_official_checkpoint, save_variables  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config file, optionally with variants: configs/davis.py[:tiny]")
    p.add_argument("--input", required=True, help="official .pth file")
    p.add_argument("--output", required=True, help="output orbax checkpoint directory (must not exist)")
    p.add_argument("--backbone-only", action="store_true", help="input is mask_rcnn_R_101_FPN_backbone.pth")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument(
        "--trust-pickle", action="store_true", help="allow full unpickling (only for files from a trusted source)"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.path.exists(args.output) and not args.overwrite:  # fail before the (slow) conversion
        print(f"error: output {args.output} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    config = load_config_file(args.config)
    try:
        variables = convert_official_checkpoint(
            config, args.input, backbone_only=args.backbone_only, trust_pickle=args.trust_pickle
        )
        save_variables(variables, args.output, overwrite=args.overwrite)
    except (CheckpointMismatchError, ImportError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(v.size for c in variables.values() for v in _leaves(c))
    print(f"wrote {args.output}: {n:,} values ({'backbone only' if args.backbone_only else 'full model'})")
    return 0


def _leaves(tree):
    for value in tree.values():
        yield from _leaves(value) if isinstance(value, dict) else (value,)


if __name__ == "__main__":
    sys.exit(main())
