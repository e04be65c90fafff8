"""The baselines' per-frame cost against the STEm-Seg forward, measured in the same run.

    python tools/bench_baselines.py                       # full DAVIS configs, one 480x854 frame
    python tools/bench_baselines.py --tiny --repeats 5    # the :tiny networks

Rows (seconds, best of ``--repeats`` after a compiling call, and the ratio to the first row):
  stemseg forward / frame     the STEm-Seg network's forward of one ``--frames``-frame clip, divided by the frames
  maskrcnn detect             the Mask R-CNN's detection on one frame (RPN, box and mask heads, NMS; jitted)
  maskrcnn paste masks        pasting ``--proposals`` 28x28 masks into the frame (NumPy / OpenCV)
  flow (dis, farneback)       optical flow of one frame pair at the frame size (OpenCV)
  of_tracker update           one OF-Tracker step with ``--proposals`` proposals (flow, warping, IoU, assignment)
  reid embed                  re-id embeddings of ``--proposals`` crops (jitted ResNet-50)
  ri_tracker update           one RI-Tracker step (distances, assignment)
Frames are the benchmark config's inference size (``data.min_dim`` / ``max_dim``) unless ``--native``.
Random weights: the costs do not depend on them (the number of proposals is fixed by ``--proposals``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stemseg_jax import preprocessing  # noqa: E402
from stemseg_jax.config import load_config_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def best_of(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def synthetic_frames(h: int, w: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """Textured frames with a small global motion, so that flow has something to find."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h + 8 * n, w + 8 * n, 3), np.uint8)
    base = np.asarray(preprocessing.resize_image(base, h + 8 * n, w + 8 * n))
    return [np.ascontiguousarray(base[2 * t: 2 * t + h, 3 * t: 3 * t + w]) for t in range(n)]


def random_proposals(h: int, w: int, n: int, seed: int = 0):
    from stemseg_jax.tracking import FrameProposals

    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        masks[i, y0: y0 + h // 4, x0: x0 + w // 5] = True
    return FrameProposals(masks=masks, scores=rng.uniform(0.5, 1, n).astype(np.float32),
                          categories=np.ones(n, np.int32))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", default="davis", choices=("davis", "youtube_vis", "kitti"))
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--native", action="store_true", help="run the networks at the frame size (padded to /32)")
    p.add_argument("--frames", type=int, default=8, help="STEm-Seg clip length")
    p.add_argument("--proposals", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from stemseg_jax.model import build_model
    from stemseg_jax.proposals import build_maskrcnn, detect, init_variables, paste_masks
    from stemseg_jax.reid import build_reid, make_embedder
    from stemseg_jax.reid.data import crop
    from stemseg_jax.tracking import FLOWS, OFTracker, RITracker

    variant = f"{args.benchmark},tiny" if args.tiny else args.benchmark
    config = load_config_file(os.path.join(REPO, f"configs/maskrcnn.py:{variant}"))
    h, w = args.height, args.width
    if args.native:
        rh, rw = h, w
    else:
        rh, rw = preprocessing.compute_resize_dims(h, w, int(config.data.min_dim), int(config.data.max_dim))
    ph, pw = preprocessing.padded_dims(rh, rw)
    frames = synthetic_frames(h, w, 2)
    net_frame = np.zeros((ph, pw, 3), np.uint8)
    net_frame[:rh, :rw] = preprocessing.resize_image(frames[0], rh, rw)
    rows = []

    model = build_model(config)
    clip = np.broadcast_to(net_frame, (1, args.frames, ph, pw, 3)).copy()
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), clip)
    forward = jax.jit(model.apply)
    rows.append(("stemseg forward / frame",
                 best_of(lambda: forward(variables, clip), args.repeats) / args.frames))

    mrcnn = build_maskrcnn(config.proposals.model)
    mvars = init_variables(mrcnn, jax.random.PRNGKey(0), (ph, pw))
    image = preprocessing.normalize_images(net_frame[None])
    hw = np.asarray([[rh, rw]], np.int32)
    det = jax.jit(lambda v, x, s: detect(v, mrcnn, x, s))
    rows.append(("maskrcnn detect", best_of(lambda: det(mvars, image, hw), args.repeats)))
    out = {k: np.asarray(v[0]) for k, v in det(mvars, image, hw).items()}
    n = args.proposals
    boxes = np.tile(np.asarray([[w * 0.2, h * 0.2, w * 0.5, h * 0.6]], np.float32), (n, 1))
    masks28 = np.resize(out["masks"], (n, *out["masks"].shape[1:]))
    rows.append((f"maskrcnn paste {n} masks", best_of(lambda: paste_masks(masks28, boxes, (h, w)), args.repeats)))

    for name, flow in sorted(FLOWS.items()):
        rows.append((f"flow ({name})", best_of(lambda f=flow: f(frames[0], frames[1]), args.repeats)))
    props = random_proposals(h, w, n)

    def of_step():
        tracker = OFTracker(FLOWS[config.tracker.flow])
        tracker.update(frames[0], props)
        t0 = time.perf_counter()
        tracker.update(frames[1], props)
        return time.perf_counter() - t0

    of_step()
    rows.append((f"of_tracker update ({n} proposals)", min(of_step() for _ in range(args.repeats))))

    reid_cfg = config.reid
    reid = build_reid(reid_cfg)
    crop_hw = tuple(int(v) for v in reid_cfg.crop_hw)
    rvars = jax.jit(reid.init)(jax.random.PRNGKey(0), np.zeros((1, *crop_hw, 3), np.float32))
    embedder = make_embedder(reid, batch_size=16)
    crops = np.stack([crop(frames[0], b, crop_hw, context=float(reid_cfg.crop_context)) for b in props.boxes])
    rows.append((f"reid embed ({n} crops)", best_of(lambda: embedder(rvars, crops), args.repeats)))
    emb = embedder(rvars, crops)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)

    def ri_step():
        tracker = RITracker()
        tracker.update(props, emb)
        t0 = time.perf_counter()
        tracker.update(props, emb)
        return time.perf_counter() - t0

    rows.append((f"ri_tracker update ({n} proposals)", min(ri_step() for _ in range(args.repeats))))

    base = rows[0][1]
    print(f"frame {h}x{w}, networks at {rh}x{rw} (padded {ph}x{pw}); {'tiny' if args.tiny else 'full'} "
          f"{args.benchmark} configs; {jax.devices()[0].platform}, best of {args.repeats}")
    print("| what | seconds | x STEm-Seg forward / frame |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.4f} | {seconds / base:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
