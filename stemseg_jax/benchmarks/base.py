"""The interface every benchmark implements (one module per benchmark, looked up in ``BENCHMARKS``).

A benchmark owns its rules end to end: which per-track class scores it needs from a method
(``class_mode``), how many tracks a video keeps, how tracks are selected, scored and written
(``open_split`` -> ``SplitWriter``), how the split is finished (JSON + zip, post-processing), where its
ground truth is, how results are scored and checked, and how the result table looks. Methods only
produce ``results.VideoResult``; nothing outside a benchmark module branches on a benchmark's name.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from stemseg_jax.results import VideoResult


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
    """What scoring and checking may be restricted to; each benchmark reads the fields it knows.

    Attributes:
      sequences: sequence / video names to score (None: the split's).
      split: the DAVIS image set.
      seqmap: a KITTI-MOTS seqmap file (sequence lengths).
      decay_mode: DAVIS decay bins, ``"official"`` (the toolkit's uint8 quirk) or ``"fixed"``.
    """

    sequences: Sequence[str] | None = None
    split: str = "val"
    seqmap: str | None = None
    decay_mode: str = "official"


DEFAULT_OPTIONS = ScoreOptions()


class SplitWriter(abc.ABC):
    """Writes one split's results video by video; ``finish`` returns what ``Benchmark.score`` reads."""

    @abc.abstractmethod
    def add(self, name: str, frame_names: Sequence[str], result: VideoResult) -> None:
        """Writes (or collects) one video: ``name`` is the sequence name / video id, ``frame_names`` the
        frames' file names."""

    @abc.abstractmethod
    def finish(self) -> str:
        """Completes the split (e.g. writes the JSON, post-processes) and returns the results path."""


class Benchmark(abc.ABC):
    name: str  # also the synthetic generator's format of the same layout
    metric = None  # the evaluation module (``format_table``)
    frame_hw: tuple[int, int]  # the real benchmark's usual frame size
    synthetic_video_frames = 50
    # What ``VideoResult.track_classes`` a method must produce (``results.CLASS_MODES``), None: none needed.
    class_mode: str | None = None

    def max_tracks(self, config) -> int:
        """Tracks kept per video: ``config.inference.max_tracks`` unless the benchmark fixes its own."""
        return int(config.inference.max_tracks)

    @abc.abstractmethod
    def open_split(self, results_dir: str, config) -> SplitWriter:
        """A writer of this benchmark's result files under ``results_dir``."""

    @abc.abstractmethod
    def ground_truth(self, dataset_cfg) -> str | None:
        """The ground truth ``score`` reads for a ``config.data`` dataset entry, None if it has none."""

    @abc.abstractmethod
    def score(self, ground_truth: str, results: str, options: ScoreOptions = DEFAULT_OPTIONS) -> dict:
        """The benchmark's official metrics of ``results`` (a folder or file) against ``ground_truth``."""

    @abc.abstractmethod
    def check(self, ground_truth: str, results: str, options: ScoreOptions = DEFAULT_OPTIONS) -> list[str]:
        """Problems of a results folder / file against the ground truth's metadata (empty: valid)."""

    def format_table(self, result: dict) -> str:
        """The official-style table of a ``score`` result (the evaluation module's)."""
        return self.metric.format_table(result)

    @abc.abstractmethod
    def headline(self, result: dict) -> dict[str, float]:
        """The figures papers report from a ``score`` result (fractions, not percentages), e.g. for tables."""

    def synthetic_split(self, work: str, num_frames: int, seed: int = 0) -> tuple[str, str, list[str]]:
        """A synthetic val split of about ``num_frames`` frames at the benchmark's real frame size, with
        perturbed ground truth written as results (a self-check and a timing run of the scoring path):
        ``(ground truth, results, sequences)``."""
        from stemseg_jax.data import synthetic  # only the synthetic self-check needs the data package

        n_videos = max(1, round(num_frames / self.synthetic_video_frames))
        info = synthetic.generate(self.name, os.path.join(work, "gt"), seed, num_train=0, num_val=n_videos,
                                  num_frames=self.synthetic_video_frames, height=self.frame_hw[0],
                                  width=self.frame_hw[1], max_objects=5)
        sequences = list(next(iter(info["splits"].values())))
        gt, results = self._write_perturbed_results(info, sequences, np.random.default_rng(seed),
                                                    os.path.join(work, "results"))
        return gt, results, sequences

    @abc.abstractmethod
    def _write_perturbed_results(self, info: dict, sequences: list[str], rng: np.random.Generator,
                                 results_dir: str) -> tuple[str, str]:
        """Writes ``perturb_mask``-ed ground truth of a synthetic split (``synthetic.generate``'s ``info``)
        as results; returns ``(ground truth, results)`` as ``score`` takes them."""

    def missing_ground_truth_hint(self) -> str:
        return "no ground truth configured, so no metrics"


def perturb_mask(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A plausible prediction of ``mask``: shifted by a few pixels, sometimes eroded away in part."""
    dy, dx = (int(v) for v in rng.integers(-4, 5, size=2))
    out = np.roll(mask, (dy, dx), axis=(0, 1))
    if rng.random() < 0.2:
        out[: out.shape[0] // 2] = False
    return out
