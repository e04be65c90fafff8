"""Streaming full-video inference: backbone once per frame, heads per clip, clustering, linking (spec §6).

Memory stays bounded however long the video: a frame's backbone features live from its first clip to
its last; a clip's head outputs wait only until every frame in it has seen all of its clips (the
foreground mask uses logits averaged over all clips containing a frame, spec §6.3); after clustering,
only per-frame track label maps and class summaries at 1/4 resolution are kept.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stemseg_jax.inference.clustering import cluster_clip, cluster_clip_per_class, clustering_options
from stemseg_jax.inference.linking import TrackChainer
from stemseg_jax.inference.schedule import clip_schedule, collapse_repeated_frames
from stemseg_jax.model import build_model
from stemseg_jax.model.outputs import bandwidths, foreground_mask
from stemseg_jax.preprocessing import compute_resize_dims, pad_image, padded_dims, resize_image
from stemseg_jax.results import TrackClassAccumulator, VideoResult


def inference_dims(config) -> tuple[int, int]:
    i = config.inference
    return (int(i.min_dim or config.data.min_dim), int(i.max_dim or config.data.max_dim))


class VideoSegmenter:
    """STEm-Seg over whole videos. ``variables`` hold ``params``, ``frozen_bn``, ``buffers``.

    ``class_mode`` (``results.CLASS_MODES``) is how the semantic head's per-pixel classes become per-track
    class scores; by default the one ``config.inference.benchmark`` asks for. Without a semantic head
    the result has no class scores.
    """

    def __init__(self, config, variables: dict, class_mode: str | None = "auto"):
        self.config = config
        self.variables = variables
        model = build_model(config)
        self._backbone = jax.jit(lambda v, x: model.apply(v, x, method="backbone_features"))
        self._heads = jax.jit(lambda v, f: model.apply(v, f, method="heads"))
        buffers = variables.get("buffers", {})
        free = buffers.get("free_dim_bandwidths")
        self.free_dim_bandwidths = np.zeros((0,), np.float32) if free is None else np.asarray(free).reshape(-1)
        self.cluster_options = clustering_options(config)
        # compact=True gathers the foreground points first (host-side count): 5-10x faster than masking.
        self._cluster = lambda e, b, s, fg: cluster_clip(
            e, b, s, fg, self.free_dim_bandwidths, compact=True, **self.cluster_options
        )
        if not config.model.use_semseg_head:
            class_mode = None
        elif class_mode == "auto":
            from stemseg_jax.benchmarks import get_benchmark

            class_mode = get_benchmark(config.inference.benchmark).class_mode
        self.class_mode = class_mode
        self.cluster_per_class = bool(config.inference.cluster_per_class)
        if self.cluster_per_class and not (config.model.use_semseg_head and config.model.num_classes > 1):
            raise ValueError(
                "config.inference.cluster_per_class needs the semantic head's classes: model.use_semseg_head is "
                f"{config.model.use_semseg_head}, model.num_classes is {config.model.num_classes}")

    def _frame_features(self, frame_bgr: np.ndarray, resized_hw, padded_hw):
        image = pad_image(resize_image(frame_bgr, *resized_hw), *padded_hw)
        return self._backbone(self.variables, jnp.asarray(image[None]))

    def segment(self, load_frame: Callable[[int], np.ndarray], num_frames: int, original_hw,
                video: str = "") -> VideoResult:
        """Segments a video whose frame ``t`` (BGR uint8 ``[H, W, 3]``) is ``load_frame(t)`` (``video``, its
        name, is not needed: STEm-Seg sees only the frames)."""
        import time

        cfg = self.config
        timings = {"backbone": 0.0, "heads": 0.0, "clustering": 0.0, "linking": 0.0}
        # High-water marks of what is held per frame/clip: bounded by the clip length, not the video's.
        self.peak_held = {"frame_features": 0, "pending_clips": 0, "frame_accumulators": 0}
        original_hw = (int(original_hw[0]), int(original_hw[1]))
        resized_hw = compute_resize_dims(*original_hw, *inference_dims(cfg))
        padded_hw = padded_dims(*resized_hw)
        clips = clip_schedule(num_frames, cfg.data.num_frames, cfg.inference.frame_overlap)
        last_use = {}
        for i, clip in enumerate(clips):
            for f in clip:
                last_use[f] = i
        resize_up = bool(cfg.inference.resize_embeddings)
        scale = 1 if resize_up else 4
        features: dict[int, tuple] = {}
        sem_sum: dict[int, np.ndarray] = {}
        sem_count: dict[int, int] = {}
        seed_sum: dict[int, np.ndarray] = {}
        pending = []  # (clip index, unique frames, embeddings, bandwidths, seediness)
        chainer = TrackChainer(num_frames)
        track_classes = TrackClassAccumulator(self.class_mode, cfg.model.num_classes) if self.class_mode else None
        for i, clip in enumerate(clips):
            t0 = time.perf_counter()
            for f in dict.fromkeys(clip):
                if f not in features:
                    features[f] = self._frame_features(load_frame(f), resized_hw, padded_hw)
            stacked = tuple(jnp.stack([features[f][lvl][0] for f in clip])[None] for lvl in range(4))
            jax.block_until_ready(stacked)
            timings["backbone"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            out = self._heads(self.variables, stacked)
            unique, positions = collapse_repeated_frames(clip)
            emb = out["embeddings"][0, positions]
            bw = bandwidths(out["bandwidth_logits"][0, positions], jnp)
            seed = out["seediness"][0, positions]
            if resize_up:
                emb, bw, seed = (_upsample_space4(x) for x in (emb, bw, seed))
            if out["semseg_logits"] is not None:
                sem = out["semseg_logits"][0]
                if resize_up:
                    sem = _upsample_space4(sem)
                sem = np.asarray(sem, np.float32)
                for p, f in enumerate(clip):  # every copy of a repeated frame counts (spec §6.3)
                    sem_sum[f] = sem_sum.get(f, 0.0) + sem[p]
                    sem_count[f] = sem_count.get(f, 0) + 1
            else:
                seed_np = np.asarray(seed)
                for p, f in enumerate(unique):
                    seed_sum[f] = seed_sum.get(f, 0.0) + seed_np[p]
                    sem_count[f] = sem_count.get(f, 0) + 1
            pending.append((i, unique, emb, bw, seed))
            held = {
                "frame_features": len(features), "pending_clips": len(pending), "frame_accumulators": len(sem_count)
            }
            self.peak_held = {k: max(v, held[k]) for k, v in self.peak_held.items()}
            jax.block_until_ready(seed)
            timings["heads"] += time.perf_counter() - t0
            for f in list(features):
                if last_use[f] <= i:
                    del features[f]
            # A pending clip is final once no later clip contains any of its frames.
            while pending and all(last_use[f] <= i for f in pending[0][1]):
                _, frames_c, emb_c, bw_c, seed_c = pending.pop(0)
                fg = np.stack([self._foreground(f, sem_sum, seed_sum, sem_count) for f in frames_c])
                t0 = time.perf_counter()
                if self.cluster_per_class:
                    classes = np.stack([self._object_class(f, sem_sum) for f in frames_c])
                    labels = cluster_clip_per_class(
                        emb_c, bw_c, seed_c, fg, classes, self.free_dim_bandwidths, compact=True, **self.cluster_options
                    )
                else:
                    labels = np.asarray(self._cluster(emb_c, bw_c, seed_c, jnp.asarray(fg)))
                timings["clustering"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                chainer.add_clip(frames_c, labels)
                timings["linking"] += time.perf_counter() - t0
            still_needed = {f for p in pending for f in p[1]}
            for f in [f for f in sem_count if last_use[f] <= i and f not in still_needed]:
                if track_classes is not None:  # the frame's track ids are final once all its clips are linked
                    track_classes.add_frame(chainer.frame_labels(f), self._class_summary(f, sem_sum, sem_count))
                sem_sum.pop(f, None)
                seed_sum.pop(f, None)
                sem_count.pop(f, None)
        t0 = time.perf_counter()
        linked = chainer.result()
        timings["linking"] += time.perf_counter() - t0
        scores = None if track_classes is None else track_classes.result()
        return VideoResult(linked, scores, scale, resized_hw, original_hw, timings)

    def _foreground(self, f, sem_sum, seed_sum, sem_count) -> np.ndarray:
        n = sem_count[f]
        return foreground_mask(sem_sum[f] / n if f in sem_sum else None, seed_sum[f] / n if f in seed_sum else None,
                               self.config.model, self.config.inference.seediness_fg_threshold)

    def _object_class(self, f, sem_sum) -> np.ndarray:
        """``[h, w]`` the most likely object class (1..C-1) of each pixel, background left out: the foreground
        decision is made elsewhere (the foreground channel), and every foreground pixel needs an object class."""
        return 1 + np.argmax(sem_sum[f][..., 1:self.config.model.num_classes], axis=-1)

    def _class_summary(self, f, sem_sum, sem_count) -> np.ndarray:
        """The frame's class information in ``class_mode``: the argmax class map for pixel votes, else the
        mean class logits (float16, as the official code keeps them)."""
        num_classes = self.config.model.num_classes
        mean = sem_sum[f][..., :num_classes] / sem_count[f]
        if self.class_mode == "pixel_votes":
            return np.argmax(mean, axis=-1).astype(np.uint8)
        return mean.astype(np.float16)


def _upsample_space4(x: jax.Array) -> jax.Array:
    """Bilinear x4 in space of ``[T, h, w, ...]`` (half-pixel; upsampling needs no antialiasing)."""
    shape = (x.shape[0], x.shape[1] * 4, x.shape[2] * 4) + x.shape[3:]
    return jax.image.resize(x, shape, "linear", antialias=False)
