"""The seed's proposal-based baselines as methods (seed supplementary Sec. III and V).

Every frame gets mask proposals — from our Mask R-CNN (``stemseg_jax.proposals``, trained by ``--mode train``
into ``workdir/maskrcnn``) or, with ``config.proposals.dir`` set, from per-video proposal files written by any
detector (``tracking.proposals``: COCO-style results JSON) — and a tracker links them over time:

  of_tracker  optical flow (``config.tracker.flow``): frame i+1's proposals warped onto frame i, linear
              assignment on mask IoU, ids propagated forward (seed: PWC-Net flow; here OpenCV's DIS by default)
  ri_tracker  re-id embeddings of the proposals (``stemseg_jax.reid``, trained into ``workdir/reid``), linear
              assignment on their Euclidean distance
  unovost     flow tracklets merged by re-id (UnOVOST; offline: the whole video's proposals first)

Tracks become per-frame label maps at the original frame size (higher-scoring proposals painted over lower
ones), so every benchmark scores them unchanged; per-track class scores are the mean detection score per
category of the track's proposals. ``config.proposals.save_dir`` keeps each video's proposals as a file, so
several trackers can be compared on exactly the same proposals (``tools/compare_baselines.py`` does).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from stemseg_jax import preprocessing
from stemseg_jax.results import VideoResult, linked_from_label_maps


# ------------------------------------------------------------------------------------------------ training
def train_proposals(config, workdir: str):
    """``--mode train`` of the OF-Tracker: the Mask R-CNN (nothing to train with precomputed proposals)."""
    if config.proposals.dir:
        raise ValueError(f"config.proposals.dir is set ({config.proposals.dir}): the proposals are precomputed, "
                         "so there is no Mask R-CNN to train; run --mode evaluate or --mode infer")
    from stemseg_jax.proposals.train import train_maskrcnn  # noqa: PLC0415 (slow import)

    return train_maskrcnn(config, workdir)


def train_proposals_and_reid(config, workdir: str):
    """``--mode train`` of the RI-Tracker and UnOVOST: the Mask R-CNN (unless proposals are precomputed), then
    the re-id network. Each resumes from its own checkpoints, so a rerun continues where it stopped."""
    from stemseg_jax.reid.train import train_reid  # noqa: PLC0415 (slow import)

    if not config.proposals.dir:
        train_proposals(config, workdir)
    return train_reid(config, workdir)


# ------------------------------------------------------------------------------------------------ proposals
def maskrcnn_checkpoint(config, workdir: str | None) -> str:
    """``config.proposals.checkpoint`` or the newest step of ``workdir/maskrcnn/checkpoints``."""
    return _newest_checkpoint(config.proposals.checkpoint, workdir, "maskrcnn", "config.proposals.checkpoint",
                              "train it with --mode train (configs/maskrcnn.py)")


def reid_checkpoint(config, workdir: str | None) -> str:
    """``config.reid.checkpoint`` or the newest step of ``workdir/reid/checkpoints``."""
    return _newest_checkpoint(config.reid.checkpoint, workdir, "reid", "config.reid.checkpoint",
                              "train it with --mode train --config.method=ri_tracker")


def _newest_checkpoint(path: str, workdir: str | None, sub: str, field: str, hint: str) -> str:
    if path:
        return os.path.abspath(os.path.expandvars(path))
    ckpt_dir = os.path.join(os.path.abspath(workdir or "."), sub, "checkpoints")
    steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) if os.path.isdir(ckpt_dir) else []
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}; {hint}, or set --{field}=PATH")
    return os.path.join(ckpt_dir, str(steps[-1]))


class MaskRCNNProposer:
    """Per-frame proposals of a trained Mask R-CNN: the frame resized as for STEm-Seg (``inference.min_dim`` /
    ``max_dim``, else ``data``'s), detections over ``proposals.min_score``, masks pasted at the original size."""

    def __init__(self, config, variables: dict):
        import jax  # noqa: PLC0415

        from stemseg_jax.proposals import build_maskrcnn, detect  # noqa: PLC0415

        self.config = config
        self.model = build_maskrcnn(config.proposals.model)
        self.variables = variables
        self.min_dim = int(config.inference.min_dim or config.data.min_dim)
        self.max_dim = int(config.inference.max_dim or config.data.max_dim)
        self.min_score = float(config.proposals.min_score)
        self._detect = jax.jit(lambda v, images, hw: detect(v, self.model, images, hw))

    def __call__(self, frame: np.ndarray):
        from stemseg_jax.proposals import paste_masks  # noqa: PLC0415
        from stemseg_jax.tracking import FrameProposals  # noqa: PLC0415

        h, w = frame.shape[:2]
        images, (rh, rw) = preprocessing.preprocess_frames(frame[None], self.min_dim, self.max_dim)
        out = self._detect(self.variables, preprocessing.normalize_images(images),
                           np.asarray([[rh, rw]], np.int32))
        out = {k: np.asarray(v[0]) for k, v in out.items()}
        keep = out["valid"] & (out["scores"] >= self.min_score)
        boxes = out["boxes"][keep] * np.asarray([w / rw, h / rh, w / rw, h / rh], np.float32)
        masks = paste_masks(out["masks"][keep], boxes, (h, w)) if keep.any() else np.zeros((0, h, w), bool)
        # A detection whose mask thresholds to nothing covers no pixel: no proposal (and no box to crop).
        nonempty = masks.any(axis=(1, 2))
        return FrameProposals(masks=masks[nonempty], scores=out["scores"][keep][nonempty].astype(np.float32),
                              categories=out["classes"][keep][nonempty].astype(np.int32))


class ReidEmbedder:
    """Re-id embeddings ``[n, D]`` of a frame's proposals: crops of their boxes (``reid.data.crop``, with the
    training crops' context) through the re-id network, L2-normalised so that the trackers' distance thresholds
    (``tracker.ri_max_distance``, ``tracker.unovost.merge_distance``) do not depend on the network's scale."""

    def __init__(self, config, variables: dict):
        from stemseg_jax.reid import build_reid, make_embedder  # noqa: PLC0415
        from stemseg_jax.reid.train import reid_section  # noqa: PLC0415

        cfg = reid_section(config)
        self.variables = variables
        self.crop_hw = tuple(int(v) for v in cfg.crop_hw)
        self.context = float(cfg.crop_context)
        self._embed = make_embedder(build_reid(cfg), batch_size=16)

    def __call__(self, frame: np.ndarray, props) -> np.ndarray:
        from stemseg_jax.reid.data import crop  # noqa: PLC0415

        if len(props) == 0:
            return np.zeros((0, 1), np.float32)
        crops = np.stack([crop(frame, b, self.crop_hw, context=self.context) for b in props.boxes])
        e = self._embed(self.variables, crops)
        return (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ segmenter
class ProposalTrackerSegmenter:
    """A proposal source + a tracker as a method (``methods.VideoSegmenterLike``).

    Args:
      link: ``(frames, proposals, embeddings) -> ids per frame`` over the whole video (``frames(t)`` re-reads
        frame ``t``: the flow trackers need consecutive frames, the offline UnOVOST all of them).
      proposer: ``frame -> FrameProposals`` (Mask R-CNN), or None to read ``proposals_dir/<video>.json``.
      embedder: ``(frame, proposals) -> [n, D]`` re-id embeddings, or None when the tracker needs none.
      save_dir: when set, each video's proposals are written there (``tracking.proposals`` format).
    """

    def __init__(self, *, link: Callable, proposer, embedder, num_classes: int, class_mode: str | None,
                 proposals_dir: str = "", save_dir: str = ""):
        self.link, self.proposer, self.embedder = link, proposer, embedder
        self.num_classes, self.class_mode = int(num_classes), class_mode
        self.proposals_dir, self.save_dir = proposals_dir, save_dir

    def segment(self, load_frame: Callable[[int], np.ndarray], num_frames: int, original_hw,
                video: str = "") -> VideoResult:
        from stemseg_jax import tracking  # noqa: PLC0415

        timings = {"proposals": 0.0, "reid": 0.0, "tracking": 0.0}
        hw = tuple(int(v) for v in original_hw)
        if self.proposer is None:
            t0 = time.perf_counter()
            path = tracking.proposals_path(self.proposals_dir, video)
            _, _, proposals = tracking.load_proposals(path, expected_hw=hw, expected_frames=num_frames)
            timings["proposals"] += time.perf_counter() - t0
        embeddings = [] if self.embedder is not None else None
        new_proposals = []
        for t in range(num_frames):  # one read of each frame for the detector and the re-id network
            if self.proposer is None and self.embedder is None:
                break
            frame = load_frame(t)
            t0 = time.perf_counter()
            props = self.proposer(frame) if self.proposer is not None else proposals[t]
            new_proposals.append(props)
            t1 = time.perf_counter()
            if self.embedder is not None:
                embeddings.append(self.embedder(frame, props))
            timings["proposals"] += t1 - t0
            timings["reid"] += time.perf_counter() - t1
        if self.proposer is not None:
            proposals = new_proposals
            if self.save_dir:
                frame_names = [f"{t:05d}" for t in range(num_frames)]
                tracking.save_proposals(tracking.proposals_path(self.save_dir, video), video, frame_names, proposals)
        t0 = time.perf_counter()
        ids = self.link(load_frame, proposals, embeddings)
        label_maps = np.stack([tracking.paint_tracks(p, i) for p, i in zip(proposals, ids)]) if num_frames else \
            np.zeros((0, *hw), np.int32)
        linked = linked_from_label_maps(label_maps)
        track_classes = None
        if self.class_mode is not None:
            votes = tracking.TrackClassVotes(self.num_classes)
            for p, i in zip(proposals, ids):
                votes.add(p, i)
            scores = votes.result()
            # A track painted over everywhere by higher-scoring ones has no pixels, so no LinkedTracks entry.
            track_classes = {k: scores[k] for k in linked.order}
        timings["tracking"] = time.perf_counter() - t0
        return VideoResult(linked=linked, track_classes=track_classes, scale=1, resized_hw=hw, original_hw=hw,
                           timings=timings)


def _online(make_tracker: Callable, uses_frames: bool, uses_embeddings: bool) -> Callable:
    """``link`` of an online tracker with ``update(...) -> ids`` (one frame at a time)."""

    def link(load_frame, proposals, embeddings):
        tracker = make_tracker()
        ids = []
        for t, props in enumerate(proposals):
            args = ([load_frame(t)] if uses_frames else []) + [props] + ([embeddings[t]] if uses_embeddings else [])
            ids.append(np.asarray(tracker.update(*args), np.int32))
        return ids

    return link


def _build(config, workdir, class_mode, *, link: Callable, needs_reid: bool) -> ProposalTrackerSegmenter:
    from stemseg_jax.checkpoints import restore_model_variables  # noqa: PLC0415

    pcfg = config.proposals
    proposer = None
    if not pcfg.dir:
        path = maskrcnn_checkpoint(config, workdir)
        proposer = MaskRCNNProposer(config, restore_model_variables(path, "config.proposals.checkpoint"))
    embedder = None
    if needs_reid:
        from stemseg_jax.reid.train import restore_reid  # noqa: PLC0415

        embedder = ReidEmbedder(config, restore_reid(config, reid_checkpoint(config, workdir)))
    return ProposalTrackerSegmenter(link=link, proposer=proposer, embedder=embedder,
                                    num_classes=int(config.model.num_classes), class_mode=class_mode,
                                    proposals_dir=os.path.expandvars(pcfg.dir) if pcfg.dir else "",
                                    save_dir=os.path.expandvars(pcfg.save_dir) if pcfg.save_dir else "")


def build_of_tracker(config, workdir: str | None, class_mode: str | None) -> ProposalTrackerSegmenter:
    from stemseg_jax.tracking import OFTracker, get_flow  # noqa: PLC0415

    tc = config.tracker
    make = lambda: OFTracker(get_flow(tc.flow), iou_threshold=float(tc.of_iou_threshold))  # noqa: E731
    return _build(config, workdir, class_mode, link=_online(make, True, False), needs_reid=False)


def build_ri_tracker(config, workdir: str | None, class_mode: str | None) -> ProposalTrackerSegmenter:
    from stemseg_jax.tracking import RITracker  # noqa: PLC0415

    tc = config.tracker
    make = lambda: RITracker(max_distance=float(tc.ri_max_distance), max_gap=int(tc.ri_max_gap))  # noqa: E731
    return _build(config, workdir, class_mode, link=_online(make, False, True), needs_reid=True)


def build_unovost(config, workdir: str | None, class_mode: str | None) -> ProposalTrackerSegmenter:
    from stemseg_jax.tracking import get_flow, unovost_track  # noqa: PLC0415

    tc = config.tracker
    flow = get_flow(tc.flow)
    params = dict(tc.unovost)

    def link(load_frame, proposals, embeddings):
        return unovost_track(load_frame, proposals, embeddings, flow, params)

    return _build(config, workdir, class_mode, link=link, needs_reid=True)
