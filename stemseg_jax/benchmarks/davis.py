"""DAVIS'19 unsupervised (spec §6.6): up to 20 proposals per sequence as indexed PNGs, scored by J&F."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from stemseg_jax.benchmarks.base import (
    DEFAULT_OPTIONS,
    Benchmark,
    ScoreOptions,
    SplitWriter,
    perturb_mask,
)
from stemseg_jax.benchmarks.masks import paint_longest_tracks
from stemseg_jax.evaluation import check, davis, writers
from stemseg_jax.results import LinkedTracks, VideoResult

FRAME_HW = (480, 854)  # DAVIS 480p


def select_tracks_davis(linked: LinkedTracks, *, scale: int, resized_hw, original_hw,
                        max_tracks: int = writers.MAX_DAVIS_PROPOSALS) -> tuple[np.ndarray, list[int]]:
    """DAVIS unsupervised output: the ``max_tracks`` longest-lived tracks (ties: first appearance) painted in
    rank order, so a shorter-lived track overwrites a longer-lived one where they overlap.

    Returns:
      ``(label_maps [T, H, W] uint8 with values 0..K, kept track ids in rank order)``.
    """
    return paint_longest_tracks(linked, max_tracks, scale=scale, resized_hw=resized_hw, original_hw=original_hw)


def write_davis_outputs(results_dir: str, seq: str, frame_names, linked: LinkedTracks, *, scale: int, resized_hw,
                        original_hw, max_tracks: int = writers.MAX_DAVIS_PROPOSALS) -> list[str]:
    """``select_tracks_davis`` + ``evaluation.writers.write_davis_sequence``; returns the written paths."""
    label_maps, _ = select_tracks_davis(linked, scale=scale, resized_hw=resized_hw, original_hw=original_hw,
                                        max_tracks=max_tracks)
    return writers.write_davis_sequence(results_dir, seq, frame_names, label_maps)


class _Writer(SplitWriter):
    def __init__(self, results_dir: str, max_tracks: int):
        self.results_dir, self.max_tracks = results_dir, max_tracks

    def add(self, name: str, frame_names: Sequence[str], result: VideoResult) -> None:
        write_davis_outputs(self.results_dir, name, list(frame_names), result.linked, max_tracks=self.max_tracks,
                            **result.chain)

    def finish(self) -> str:
        return self.results_dir


class Davis(Benchmark):
    name = "davis"
    metric = davis
    frame_hw = FRAME_HW
    class_mode = None  # class-agnostic

    def max_tracks(self, config) -> int:
        # The toolkit stops on more than 20 proposals: the benchmark's rule, not a setting.
        return writers.MAX_DAVIS_PROPOSALS

    def open_split(self, results_dir: str, config) -> SplitWriter:
        return _Writer(results_dir, self.max_tracks(config))

    def ground_truth(self, dataset_cfg) -> str | None:
        return os.path.expandvars(str(dataset_cfg.root))

    def score(self, ground_truth: str, results: str, options: ScoreOptions = DEFAULT_OPTIONS) -> dict:
        return davis.evaluate_davis(ground_truth, results, options.split, options.sequences,
                                    decay_mode=options.decay_mode)

    def check(self, ground_truth: str, results: str, options: ScoreOptions = DEFAULT_OPTIONS) -> list[str]:
        return check.check_davis(ground_truth, results, options.split, options.sequences)

    def headline(self, result: dict) -> dict[str, float]:
        g = result["global"]
        return {"J&F": g["J&F-Mean"], "J": g["J-Mean"], "F": g["F-Mean"]}

    def _write_perturbed_results(self, info, sequences, rng, res) -> tuple[str, str]:
        h, w = self.frame_hw
        for seq in sequences:
            names, gt = davis.load_gt_sequence(info["root"], seq)
            n = int(gt[0].max())
            perm = rng.permutation(n) + 1
            pred = np.zeros_like(gt)
            for k in range(1, n + 1):
                for t in range(len(gt)):
                    pred[t][perturb_mask(rng, gt[t] == k)] = perm[k - 1]
            pred[:, : h // 8, : w // 8] = n + 1  # a spurious proposal
            writers.write_davis_sequence(res, seq, names, pred)
        return info["root"], res
