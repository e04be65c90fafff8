"""KITTI-MOTS (spec §6.8): classed, non-overlapping tracks per sequence in the MOTS text format, the
official post-processing, then sMOTSA / MOTSA / MOTSP (mots_tools) and HOTA (TrackEval)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

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
from stemseg_jax.benchmarks.masks import masks_to_original, ranked, resolve_overlaps
from stemseg_jax.evaluation import check, kitti_mots, writers
from stemseg_jax.evaluation.writers import KITTI_CAR, KITTI_PEDESTRIAN
from stemseg_jax.results import LinkedTracks, VideoResult

FRAME_HW = (375, 1242)
KITTI_OVERLAP_RULES = ("latest_track", "longest_lifetime")
# Written ids are class * 1000 + id, so a sequence holds at most 999 tracks (the official 1000 would
# collide with the next class's id 0).
KITTI_MAX_TRACKS = 999


def track_class(scores: np.ndarray) -> int:
    """Car or pedestrian from a track's class scores ``[C]`` (for STEm-Seg pixel votes): pedestrian needs a
    strictly higher score than car (ties -> car, as official); background is never chosen."""
    scores = np.asarray(scores)
    return KITTI_PEDESTRIAN if scores[KITTI_PEDESTRIAN] > scores[KITTI_CAR] else KITTI_CAR


@dataclasses.dataclass
class KittiTracks:
    """Kept KITTI-MOTS tracks: ``track_ids[i]`` (linked id) is written as id ``i + 1`` with ``class_ids[i]``."""

    track_ids: list[int]
    class_ids: list[int]


def select_tracks_kitti(linked: LinkedTracks, track_classes: dict[int, np.ndarray], *,
                        max_tracks: int = 1000) -> KittiTracks:
    """KITTI-MOTS track selection and class.

    Keeps the ``max_tracks`` largest tracks by pixel count, then orders them by lifetime ascending
    (stable); that order gives the written ids 1..K. The class is ``track_class`` of the track's scores
    (``VideoResult.track_classes``, mode "pixel_votes": the argmax class map's votes over its pixels).
    """
    by_size = ranked(linked.pixel_counts, linked.order, descending=True)[:max_tracks]
    kept = ranked(linked.lifetimes, by_size, descending=False)
    missing = [k for k in kept if k not in track_classes]
    if missing:
        raise ValueError(f"no class scores for tracks {missing[:10]}")
    return KittiTracks(track_ids=kept, class_ids=[track_class(track_classes[k]) for k in kept])


def kitti_detections(linked: LinkedTracks, selection: KittiTracks, *, scale: int, resized_hw, original_hw,
                     overlap: str = "latest_track") -> Iterator[tuple[int, int, int, dict]]:
    """Yields ``(frame, track_id 1..K, class_id, rle)`` for every kept track with pixels in a frame.

    Overlaps between the full-resolution masks of a frame go to one track per pixel:
    ``"latest_track"`` (default, the official code) to the track created latest (largest linked id);
    ``"longest_lifetime"`` to the longest-lived one, as the official comment intends (the spec offers
    no measured alternative, so the default stays the official behaviour). A track whose pixels are
    all taken by others still yields an empty RLE, as official.
    """
    if overlap not in KITTI_OVERLAP_RULES:
        raise ValueError(f"overlap must be one of {KITTI_OVERLAP_RULES}, got {overlap!r}")
    chain = dict(scale=scale, resized_hw=resized_hw, original_hw=tuple(int(v) for v in original_hw))
    kept = np.asarray(selection.track_ids, np.int64)
    if not len(kept):
        return
    # Priority per kept track: the larger value wins a contested pixel.
    priority = kept if overlap == "latest_track" else np.arange(len(kept))
    position = np.full(int(max(kept.max(), max(linked.order, default=0))) + 2, -1, np.int64)
    position[kept + 1] = np.arange(len(kept))
    for t in range(linked.num_frames):
        label_map = linked.label_maps[t]
        present = position[np.unique(label_map[label_map >= 0]) + 1]
        active = np.sort(present[present >= 0])
        if not len(active):
            continue
        low = label_map[None] == kept[active][:, None, None]
        owned = resolve_overlaps(masks_to_original(low, **chain), priority[active])
        for i, rle in zip(active, io.encode_rles(owned)):
            yield t, int(i) + 1, selection.class_ids[i], rle


def write_kitti_outputs(results_dir: str, seq_id, linked: LinkedTracks, track_classes, *, scale: int, resized_hw,
                        original_hw, max_tracks: int = 1000, overlap: str = "latest_track") -> str:
    """``select_tracks_kitti`` + ``kitti_detections`` + ``write_kitti_mots_sequence``; returns the file path.

    ``max_tracks`` is capped at 999 (see ``KITTI_MAX_TRACKS``). A sequence without tracks gets an empty
    file (the official code raises instead).
    """
    selection = select_tracks_kitti(linked, track_classes, max_tracks=min(int(max_tracks), KITTI_MAX_TRACKS))
    detections = kitti_detections(linked, selection, scale=scale, resized_hw=resized_hw, original_hw=original_hw,
                                  overlap=overlap)
    return writers.write_kitti_mots_sequence(results_dir, seq_id, detections)


class _Writer(SplitWriter):
    def __init__(self, results_dir: str, max_tracks: int, postprocess: bool, min_area_scale: float):
        self.results_dir, self.max_tracks = results_dir, max_tracks
        self.postprocess, self.min_area_scale = postprocess, min_area_scale

    def add(self, name: str, frame_names: Sequence[str], result: VideoResult) -> None:
        if result.track_classes is None:
            raise ValueError(f"KITTI-MOTS sequence {name}: the method gave no class scores (car / pedestrian per "
                             "track; STEm-Seg needs model.use_semseg_head=True)")
        write_kitti_outputs(self.results_dir, name, result.linked, result.track_classes,
                            max_tracks=self.max_tracks, **result.chain)

    def finish(self) -> str:
        if not self.postprocess:
            return self.results_dir
        return writers.postprocess_kitti_mots_dir(self.results_dir, area_scale=self.min_area_scale)


class KittiMots(Benchmark):
    name = "kitti_mots"
    metric = kitti_mots
    frame_hw = FRAME_HW
    class_mode = "pixel_votes"

    def open_split(self, results_dir: str, config) -> SplitWriter:
        i = config.inference
        return _Writer(results_dir, self.max_tracks(config), bool(i.kitti_postprocess), float(i.kitti_min_area_scale))

    def ground_truth(self, dataset_cfg) -> str | None:
        return os.path.expandvars(str(dataset_cfg.root))

    def score(self, ground_truth: str, results: str, options: ScoreOptions = DEFAULT_OPTIONS) -> dict:
        return kitti_mots.evaluate_kitti_mots(ground_truth, results, options.sequences, options.seqmap)

    def check(self, ground_truth: str, results: str, options: ScoreOptions = DEFAULT_OPTIONS) -> list[str]:
        return check.check_kitti_mots(ground_truth, results, options.sequences, options.seqmap)

    def headline(self, result: dict) -> dict[str, float]:
        return {f"sMOTSA {name}": result["classes"][name]["mots_tools"]["sMOTSA"] for name in ("car", "pedestrian")}

    def _write_perturbed_results(self, info, sequences, rng, res) -> tuple[str, str]:
        h, w = self.frame_hw
        for seq in sequences:
            frames = kitti_mots.load_txt(os.path.join(info["val_gt"], f"{seq}.txt"), (1, 2, 10))
            dets = []
            for f, objs in frames.items():
                taken = np.zeros((h, w), bool)
                for oid, cls, rle in objs:
                    if cls == writers.KITTI_IGNORE or rng.random() < 0.1:
                        continue
                    m = perturb_mask(rng, mask_utils.decode(rle).astype(bool)) & ~taken
                    taken |= m
                    track = oid % 1000 if rng.random() < 0.97 else int(rng.integers(1, 999))
                    if m.any() and all(d[1] != track or d[2] != cls for d in dets if d[0] == f):
                        dets.append((f, track, cls, m))
            writers.write_kitti_mots_sequence(res, seq, dets)
        return os.path.dirname(info["val_gt"]), res
