"""YouTube-VIS 2019 (spec §6.7): scored, categorised tracks in one results.json (+ results.zip), AP."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from stemseg_jax import io
from stemseg_jax.benchmarks.base import (
    DEFAULT_OPTIONS,
    Benchmark,
    ScoreOptions,
    SplitWriter,
    perturb_mask,
)
from stemseg_jax.benchmarks.masks import frame_masks, ranked
from stemseg_jax.evaluation import check, writers, ytvis
from stemseg_jax.results import LinkedTracks, VideoResult

FRAME_HW = (360, 640)  # YouTube-VIS's common 720p, halved


def track_category(scores: np.ndarray) -> int:
    """The category of a track from its class scores ``[C]``: the argmax over the object classes (channel 0,
    background, dropped); for STEm-Seg the mean logits, where the official softmax first changes nothing."""
    return int(np.argmax(np.asarray(scores)[1:])) + 1


def select_tracks_ytvis(linked: LinkedTracks, track_classes: dict[int, np.ndarray], *, video_id: int, scale: int,
                        resized_hw, original_hw, max_tracks: int = 10) -> list[dict]:
    """YouTube-VIS results of one video.

    Keeps the ``max_tracks`` longest-lived tracks. Score = the track's pixel count / the largest pixel
    count among the kept tracks. Category = ``track_category`` of the track's class scores.

    Args:
      track_classes: track id -> class scores ``[C]`` (``VideoResult.track_classes``, mode "mean_logits").
      video_id: the dataset's video id.

    Returns:
      a list of ``{video_id, category_id, score, segmentations}`` (one compressed RLE per frame, empty
      frames included), ready for ``write_ytvis_results``; empty when no track exists.
    """
    kept = ranked(linked.lifetimes, linked.order, descending=True)[:max_tracks]
    if not kept:
        return []
    missing = [k for k in kept if k not in track_classes]
    if missing:
        raise ValueError(f"video {video_id}: no class scores for tracks {missing[:10]}")
    chain = dict(scale=scale, resized_hw=resized_hw, original_hw=tuple(int(v) for v in original_hw))
    segmentations = [[] for _ in kept]
    for t in range(linked.num_frames):
        for i, rle in enumerate(io.encode_rles(frame_masks(linked.label_maps[t], kept, **chain))):
            segmentations[i].append(rle)
    counts = np.asarray([linked.pixel_counts[k] for k in kept], np.float64)
    return [
        {"video_id": int(video_id), "category_id": track_category(track_classes[k]),
         "score": float(counts[i] / counts.max()), "segmentations": segmentations[i]}
        for i, k in enumerate(kept)
    ]


class _Writer(SplitWriter):
    def __init__(self, results_dir: str, max_tracks: int):
        self.results_dir, self.max_tracks = results_dir, max_tracks
        self.entries: list[dict] = []

    def add(self, name: str, frame_names: Sequence[str], result: VideoResult) -> None:
        if result.track_classes is None:
            raise ValueError(f"YouTube-VIS video {name}: the method gave no class scores (YouTube-VIS needs a "
                             "category per track; STEm-Seg needs model.use_semseg_head=True)")
        self.entries += select_tracks_ytvis(result.linked, result.track_classes, video_id=int(name),
                                            max_tracks=self.max_tracks, **result.chain)

    def finish(self) -> str:
        return writers.write_ytvis_results(self.results_dir, self.entries)[0]


class YouTubeVIS(Benchmark):
    name = "ytvis"
    metric = ytvis
    frame_hw = FRAME_HW
    synthetic_video_frames = 30
    class_mode = "mean_logits"

    def open_split(self, results_dir: str, config) -> SplitWriter:
        return _Writer(results_dir, self.max_tracks(config))

    def ground_truth(self, dataset_cfg) -> str | None:
        gt_json = dataset_cfg.get("gt_json", "")
        return os.path.expandvars(gt_json) if gt_json else None

    def missing_ground_truth_hint(self) -> str:
        return ("no ground truth configured (data.val_dataset.gt_json), so no metrics (YouTube-VIS val ground "
                "truth is private: upload results.zip to the evaluation server)")

    def score(self, ground_truth: str, results: str, options: ScoreOptions = DEFAULT_OPTIONS) -> dict:
        return ytvis.evaluate_ytvis(ground_truth, results)

    def check(self, ground_truth: str, results: str, options: ScoreOptions = DEFAULT_OPTIONS) -> list[str]:
        return check.check_ytvis(ground_truth, results)

    def headline(self, result: dict) -> dict[str, float]:
        return {"AP": result["stats"]["AP"]}

    def _write_perturbed_results(self, info, sequences, rng, res) -> tuple[str, str]:
        h, w = self.frame_hw
        with open(info["val_gt"]) as fh:
            gt = json.load(fh)
        entries = []
        for a in gt["annotations"]:
            masks = np.stack([
                perturb_mask(rng, mask_utils.decode(mask_utils.frPyObjects(s, h, w)).astype(bool)) if s else
                np.zeros((h, w), bool) for s in a["segmentations"]
            ])
            cat = a["category_id"] if rng.random() < 0.8 else int(rng.choice([c["id"] for c in gt["categories"]]))
            entries.append(writers.ytvis_entry(a["video_id"], cat, float(rng.random()), masks))
        path, _ = writers.write_ytvis_results(res, entries)
        return info["val_gt"], path
