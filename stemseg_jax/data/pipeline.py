"""The training input pipeline: a deterministic, resumable plan of batches, loaded by grain workers.

Plan (built once per "epoch" of ``num_steps * batch_size`` samples, from the seed alone, spec §5.2):
every dataset of ``config.data.datasets`` gets ``round(w * S)`` samples; video datasets pre-sample
that many clips (spec §5.3), image datasets repeat or subsample their images. Samples are then
grouped by *size bucket* and cut into batches, and the batches are shuffled. Step k reads batch
``k mod num_batches`` of epoch ``k div num_batches``; every random draw made while loading a clip
comes from a generator seeded with ``(seed, k, slot)``. A batch therefore depends only on
``(seed, k)``: resuming at ``start_step = k`` needs no replay, and the number of workers does not
change the data.

Buckets: each record's padded size follows from its height/width and the resize rule, so the plan
knows every sample's padded shape before decoding anything. Shapes are split by orientation
(landscape / portrait) and, within one, the distinct shapes sorted by area are cut into up to
``BUCKETS_PER_ORIENTATION`` runs so that the expected padded area is least (a small dynamic
programme weighted by each record's expected share of the samples); a bucket's shape is the
elementwise maximum of its run, and a sample goes to the smallest bucket that contains it. All clips
of a batch share one bucket, so a run compiles at most a handful of shapes (one per bucket) while a
clip is padded only up to its bucket, not to the dataset maximum. An incomplete last batch of a
bucket is filled up with random other samples of the same bucket.

Workers: grain ``MapDataset`` (random access by step, which is what makes resumption free) mapped by
a picklable ``BatchLoader``, turned into an ``IterDataset`` with in-process read threads and
``mp_prefetch`` worker processes. grain keeps the output order deterministic whatever the worker
count.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import cv2
import grain.python as grain
import numpy as np
from absl import flags

from stemseg_jax import preprocessing
from stemseg_jax.data import augment, check, duplicator, sampling
from stemseg_jax.data.readers import dataset_option, load_dataset
from stemseg_jax.io import read_image

BUCKETS_PER_ORIENTATION = 2
PAD = np.asarray(preprocessing.PAD_VALUE_BGR, np.uint8)


@dataclasses.dataclass
class EpochPlan:
    """One epoch of samples and batches.

    Attributes:
      sample_dataset: ``[N]`` index into ``DataSources.names``.
      sample_record: ``[N]`` index into that dataset's records.
      sample_frames: ``[N, T]`` frame indices (row of -1 for image samples).
      sample_bucket: ``[N]`` index into ``DataSources.buckets``.
      batches: ``[num_batches, B]`` sample indices; all samples of a row share a bucket.
    """

    sample_dataset: np.ndarray
    sample_record: np.ndarray
    sample_frames: np.ndarray
    sample_bucket: np.ndarray
    batches: np.ndarray


@dataclasses.dataclass
class DataSources:
    """The loaded datasets and everything about them that does not change between epochs."""

    names: tuple[str, ...]
    cfgs: tuple[Mapping[str, Any], ...]
    records: tuple[Sequence[Any], ...]
    record_bucket: tuple[np.ndarray, ...]  # per dataset: [num_records] bucket index
    buckets: np.ndarray  # [K, 2] padded (H, W)


def _dataset_seed(seed: int, epoch: int, name: str) -> np.random.Generator:
    # crc32 of the name: a dataset's samples do not change when another dataset is added or renamed.
    return np.random.default_rng([seed, epoch, zlib.crc32(name.encode())])


def _cfg_get(cfg: Mapping[str, Any], key: str, default):
    return cfg[key] if key in cfg else default


def _is_image_dataset(records: Sequence[Any], name: str) -> bool:
    kinds = {bool(r.is_image) for r in records}
    if len(kinds) > 1:
        raise ValueError(f"dataset {name!r} mixes image and video records")
    return kinds == {True}


def record_padded_dims(record, min_dim: int, max_dim: int) -> tuple[int, int]:
    return preprocessing.padded_dims(*preprocessing.compute_resize_dims(record.height, record.width, min_dim, max_dim))


def _best_cuts(shapes: np.ndarray, weights: np.ndarray, max_groups: int) -> list[tuple[int, int]]:
    """Cuts ``shapes [n, 2]`` (in order) into <= ``max_groups`` runs ``[i, j)`` of least padded area."""
    n = len(shapes)
    cum_w = np.concatenate([[0.0], np.cumsum(weights)])

    def cost(i, j):  # shapes[i:j] padded to their elementwise maximum
        top = shapes[i:j].max(axis=0)
        return (cum_w[j] - cum_w[i]) * float(top[0] * top[1])

    # best[k][j]: least cost of the first j shapes in k groups; cut[k][j]: where the last group starts.
    best = [[0.0] + [np.inf] * n] + [[np.inf] * (n + 1) for _ in range(max_groups)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    for k in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                c = best[k - 1][i] + cost(i, j)
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    k = min(range(1, max_groups + 1), key=lambda kk: best[kk][n])
    runs, j = [], n
    while j > 0:
        runs.append((cut[k][j], j))
        j, k = cut[k][j], k - 1
    return runs[::-1]


def choose_buckets(
    shapes: np.ndarray, weights: np.ndarray, per_orientation: int = BUCKETS_PER_ORIENTATION
) -> np.ndarray:
    """Bucket shapes for padded sizes ``shapes [N, 2]`` seen with relative frequencies ``weights [N]``.

    Per orientation, the distinct shapes sorted by area are cut into at most ``per_orientation``
    contiguous groups so that the expected padded area (sum over samples of their bucket's area) is
    smallest; a group's bucket is its elementwise maximum. Returns ``[K, 2]`` (H, W) with
    K <= 2 * per_orientation; every input shape fits in some bucket.
    """
    buckets = []
    for portrait in (False, True):
        sel = (shapes[:, 0] > shapes[:, 1]) == portrait
        if not sel.any():
            continue
        distinct, inverse = np.unique(shapes[sel], axis=0, return_inverse=True)
        wts = np.bincount(inverse.ravel(), weights=weights[sel], minlength=len(distinct))
        order = np.argsort(distinct[:, 0] * distinct[:, 1], kind="stable")
        distinct, wts = distinct[order], wts[order]
        for i, j in _best_cuts(distinct, wts, per_orientation):
            buckets.append(distinct[i:j].max(axis=0))
    return np.unique(np.asarray(buckets, np.int64), axis=0)


def assign_buckets(shapes: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """Index of the smallest-area bucket containing each shape (``shapes [N, 2]`` -> ``[N]``)."""
    fits = (shapes[:, None, :] <= buckets[None, :, :]).all(axis=2)
    if not fits.any(axis=1).all():
        raise ValueError("a sample shape fits in no bucket")
    area = np.where(fits, buckets[None, :, 0] * buckets[None, :, 1], np.iinfo(np.int64).max)
    return area.argmin(axis=1)


def load_sources(config, records_by_dataset: Mapping[str, Sequence[Any]] | None = None) -> DataSources:
    """Reads every dataset of ``config.data.datasets`` (through ``load_dataset``) and picks buckets.

    ``records_by_dataset`` replaces the readers (tests, tools that already hold records).
    """
    data = config.data
    names = tuple(sorted(data.datasets.keys()))
    if not names:
        raise ValueError("config.data.datasets is empty: no training data")
    cfgs = tuple(data.datasets[n] for n in names)
    if records_by_dataset is None:
        records_by_dataset = {n: load_dataset(c, f"data.datasets.{n}") for n, c in zip(names, cfgs)}
    records = tuple(list(records_by_dataset[n]) for n in names)
    for n, recs in zip(names, records):
        if not recs:
            raise ValueError(f"dataset {n!r} has no records")
    # The data check's cheap part (no pixel decoded): a category id the model has no class for, or a missing
    # frame file, stops training here rather than at the step that samples it (a NaN loss, a silently
    # dropped target, a failed worker).
    num_classes = check.model_class_range(config)
    check.raise_if_problems(
        [p for n, recs in zip(names, records)
         for p in check.category_problems(recs, f"data.datasets.{n}", num_classes)
         + check.frame_file_problems(recs, f"data.datasets.{n}")]
    )
    # Expected share of the samples per record: the dataset's weight spread over its records.
    ds_weights = sampling.mixture_quotas({n: dataset_option(c, "weight") for n, c in zip(names, cfgs)}, 10**9)
    shapes, weights = [], []
    for n, recs in zip(names, records):
        s = np.asarray([record_padded_dims(r, data.min_dim, data.max_dim) for r in recs], np.int64)
        shapes.append(s)
        weights.append(np.full(len(recs), max(ds_weights[n], 1) / len(recs)))
    buckets = choose_buckets(np.concatenate(shapes), np.concatenate(weights))
    record_bucket = tuple(assign_buckets(s, buckets) for s in shapes)
    return DataSources(names, cfgs, records, record_bucket, buckets)


def _video_views(records: Sequence[Any], split: bool) -> list[sampling.SequenceView]:
    views = []
    for i, r in enumerate(records):
        if split:
            views.extend(sampling.kitti_split_views(r, i))
        else:
            views.append(sampling.nonempty_frame_view(r, i))
    return views


def build_epoch_plan(config, sources: DataSources, seed: int, epoch: int) -> EpochPlan:
    """The samples and batches of one epoch (module docstring). Deterministic in (seed, epoch)."""
    data, batch_size = config.data, config.train.batch_size
    total = config.train.num_steps * batch_size
    weights = {n: dataset_option(c, "weight") for n, c in zip(sources.names, sources.cfgs)}
    quotas = sampling.mixture_quotas(weights, total)
    ds_idx, rec_idx, frames = [], [], []
    for d, (name, cfg, recs) in enumerate(zip(sources.names, sources.cfgs, sources.records)):
        rng = _dataset_seed(seed, epoch, name)
        quota = quotas[name]
        if _is_image_dataset(recs, name):
            usable = np.asarray([i for i, r in enumerate(recs) if r.frame_instances[0]], np.int64)
            if usable.size == 0:
                raise ValueError(f"dataset {name!r}: no image has an instance")
            r = usable[sampling.resample_to_quota(len(usable), quota, rng, data.subsample)]
            f = np.full((len(r), data.num_frames), -1, np.int64)
        else:
            gap = int(_cfg_get(cfg, "frame_gap", data.frame_gap))
            split = bool(dataset_option(cfg, "split_on_empty_frames"))
            r, f = sampling.sample_video_clips(_video_views(recs, split), quota, data.num_frames, gap, rng)
        ds_idx.append(np.full(len(r), d, np.int64))
        rec_idx.append(r)
        frames.append(f)
    sample_dataset = np.concatenate(ds_idx)
    sample_record = np.concatenate(rec_idx)
    sample_frames = np.concatenate(frames)
    sample_bucket = np.empty(len(sample_dataset), np.int64)
    for d in range(len(sources.names)):
        sel = sample_dataset == d
        sample_bucket[sel] = sources.record_bucket[d][sample_record[sel]]

    rng = np.random.default_rng([seed, epoch, 0xBA7C])
    batches = []
    for b in range(len(sources.buckets)):
        members = rng.permutation(np.flatnonzero(sample_bucket == b))
        if members.size == 0:
            continue
        short = -len(members) % batch_size
        if short:
            members = np.concatenate([members, rng.choice(members, short, replace=members.size < short)])
        batches.append(members.reshape(-1, batch_size))
    batches = np.concatenate(batches)[rng.permutation(sum(len(b) for b in batches))]
    return EpochPlan(sample_dataset, sample_record, sample_frames, sample_bucket, batches)


# ------------------------------------------------------------------------------------------ clips


def _read_frames(record, frames: Sequence[int]) -> np.ndarray:
    images = [read_image(record.frame_paths[f]) for f in frames]
    for f, im in zip(frames, images):
        if im.shape[:2] != (record.height, record.width):
            raise ValueError(
                f"{record.frame_paths[f]}: frame {f} is {im.shape[1]}x{im.shape[0]}, "
                f"the annotations say {record.width}x{record.height}"
            )
    return np.stack(images)


def _resize_frames_into(images: np.ndarray, out: np.ndarray) -> None:
    """Bilinear-resizes ``images [T, H, W, 3]`` into the top-left ``[T, h, w, 3]`` corner views ``out``."""
    new_h, new_w = out.shape[1:3]
    for t, im in enumerate(images):
        out[t] = preprocessing.resize_image(im, new_h, new_w)


def _resize_binary(planes: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Resizes binary maps ``[N, T, H, W]`` -> ``[N, T, new_h, new_w]``: bilinear, then > 0.5 (spec §7.3).

    Computed on 0/255 uint8 planes (half the time of float32 here); the result can differ from the
    float rule only where the bilinear weight is within 1/255 of 0.5. One plane per OpenCV call: the
    planes are contiguous that way, and all-False planes (absent instances, no ignore) are skipped.
    """
    n, t = planes.shape[:2]
    out = np.zeros((n, t, new_h, new_w), bool)
    if planes.shape[2:] == (new_h, new_w):
        out[...] = planes
        return out
    live = planes.reshape(n, t, -1).any(axis=2)
    for i, f in zip(*np.nonzero(live)):
        plane = planes[i, f].view(np.uint8) * np.uint8(255)
        out[i, f] = preprocessing.resize_image(plane, new_h, new_w) > 127
    return out


def load_clip(
    record,
    frames: np.ndarray,
    ds_cfg: Mapping[str, Any],
    data_cfg,
    rng: np.random.Generator,
    bucket_hw: tuple[int, int],
    out: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Decodes, augments, resizes and pads one training clip.

    Args:
      record: a ``VideoRecord``.
      frames: ``[T]`` frame indices into the record, or all -1 for an image record.
      ds_cfg: the dataset's entry of ``config.data.datasets``.
      data_cfg: ``config.data``.
      rng: this clip's randomness.
      bucket_hw: padded (H, W) of the batch.
      out: arrays of the shapes below to write into (one clip of a preallocated batch: saves a copy of
        the largest arrays); ``masks``, ``instance_valid``, ``category_ids`` and ``ignore`` must be zeroed.

    Returns:
      ``images [T, Hb, Wb, 3] uint8``, ``masks [I_max, T, Hb, Wb] bool``, ``instance_valid [I_max]``,
      ``category_ids [I_max] int32``, ``ignore [T, Hb, Wb] bool``.
    """
    num_frames, max_inst = data_cfg.num_frames, data_cfg.max_instances
    flip = False
    if record.is_image:
        ids = sorted(record.frame_instances[0])
        image = _read_frames(record, [0])[0]
        masks, ignore = record.masks.load([0], ids)
        masks, ignore = masks[:, 0], ignore[0]
        min_area = dataset_option(ds_cfg, "min_instance_area")
        if min_area:
            keep = masks.reshape(len(ids), -1).sum(axis=1) >= min_area
            ids, masks = [i for i, k in zip(ids, keep) if k], masks[keep]
        if rng.random() < 0.5:
            image, masks, ignore = image[:, ::-1], masks[..., ::-1], ignore[:, ::-1]
        fmt = _cfg_get(ds_cfg, "format", "")
        images, masks, ignore, _ = augment.image_to_clip(
            image, masks, ignore, num_frames, rng, recipe=data_cfg.augmentation, source_format=fmt
        )
        categories = [record.categories[i] for i in ids]
    else:
        frames = [int(f) for f in frames]
        ids = sorted(set().union(*(record.frame_instances[f] for f in frames)))
        images = _read_frames(record, frames)
        masks, ignore = record.masks.load(frames, ids)
        categories = [record.categories[i] for i in ids]
        dup = dataset_option(ds_cfg, "instance_duplication") and data_cfg.instance_duplication
        if dup and len(ids) == 1:
            result = duplicator.duplicate_single_instance(images, masks[0], rng)
            if result is not None:
                images, masks = result
                categories = categories * 2
        if dataset_option(ds_cfg, "background_as_ignore"):
            # Official DAVIS behaviour (spec §4.7): unannotated pixels are ignore, not background.
            ignore = ignore | ~masks.any(axis=0)
        # Clip-level flip (seed); applied after resizing below, where the arrays are smaller. Bilinear
        # half-pixel resizing is mirror-symmetric: the order changes OpenCV's fixed-point rounding of
        # about 0.3 % of pixel values by one grey level, nothing else.
        flip = data_cfg.video_flip and rng.random() < 0.5

    masks = np.asarray(masks, bool).reshape(-1, *images.shape[:3])
    ignore = np.asarray(ignore, bool)
    h, w = images.shape[1:3]
    new_h, new_w = preprocessing.compute_resize_dims(h, w, data_cfg.min_dim, data_cfg.max_dim)
    bh, bw = bucket_hw
    # ``data.crop_width``: the loader narrowed the batch to the crop, so the clip is built at its full
    # padded width first and a random window of the bucket's width is cut from it at the end.
    windowed = bool(new_w > bw and _cfg_get(data_cfg, "crop_width", 0))
    if windowed:
        window_out, out = out, None
        bw = preprocessing.padded_dims(new_h, new_w)[1]
    if out is None:
        out = {
            "images": np.empty((num_frames, bh, bw, 3), np.uint8),
            "masks": np.zeros((max_inst, num_frames, bh, bw), bool),
            "instance_valid": np.zeros(max_inst, bool),
            "category_ids": np.zeros(max_inst, np.int32),
            "ignore": np.zeros((num_frames, bh, bw), bool),
        }
    out_images = out["images"]
    out_images[:, new_h:] = PAD
    out_images[:, :new_h, new_w:] = PAD
    _resize_frames_into(images, out_images[:, :new_h, :new_w])
    binary = _resize_binary(np.concatenate([masks, ignore[None]]), new_h, new_w)
    masks, ignore = binary[:-1], binary[-1]

    # Instances that vanished (augmented out of the frame, or lost in downscaling) carry no signal.
    area = np.count_nonzero(masks.reshape(len(masks), -1), axis=1)
    order = [i for i in np.argsort(-area, kind="stable") if area[i] > 0]
    keep, overflow = sorted(order[:max_inst]), order[max_inst:]
    if overflow:  # more instances than slots: the smallest become ignore regions (documented)
        ignore = ignore | masks[overflow].any(axis=0)
    out["masks"][: len(keep), :, :new_h, :new_w] = masks[keep]
    out["instance_valid"][: len(keep)] = True
    out["category_ids"][: len(keep)] = 1 if data_cfg.class_agnostic else [categories[i] for i in keep]
    out["ignore"][:, :new_h, :new_w] = ignore
    if flip:
        region = (slice(None), slice(0, new_h), slice(new_w - 1, None, -1))  # [T, h, w] mirrored
        out_images[:, :new_h, :new_w] = out_images[region].copy()
        out["masks"][:, :, :new_h, :new_w] = out["masks"][(slice(None),) + region].copy()
        out["ignore"][:, :new_h, :new_w] = out["ignore"][region].copy()
    if windowed:
        x0 = int(rng.integers(0, new_w - bucket_hw[1] + 1))
        return _cut_window(out, x0, bucket_hw[1], window_out)
    return out


def _cut_window(full: dict[str, np.ndarray], x0: int, width: int, out: dict[str, np.ndarray] | None):
    """Columns ``[x0, x0 + width)`` of a built clip; instances left with no pixel lose their slot (the
    remaining ones move up, keeping their order)."""
    cols = slice(x0, x0 + width)
    masks = full["masks"][..., cols]
    kept = np.flatnonzero(full["instance_valid"] & masks.reshape(len(masks), -1).any(axis=1))
    if out is None:
        out = {
            "images": np.empty(full["images"].shape[:2] + (width, 3), np.uint8),
            "masks": np.zeros(masks.shape, bool),
            "instance_valid": np.zeros_like(full["instance_valid"]),
            "category_ids": np.zeros_like(full["category_ids"]),
            "ignore": np.zeros(full["ignore"].shape[:2] + (width,), bool),
        }
    out["images"][...] = full["images"][:, :, cols]
    out["ignore"][...] = full["ignore"][..., cols]
    out["masks"][: len(kept)] = masks[kept]
    out["instance_valid"][: len(kept)] = True
    out["category_ids"][: len(kept)] = full["category_ids"][kept]
    return out


def clip_id(name: str, record, frames: np.ndarray) -> str:
    if record.is_image:
        return f"{name}/{record.name}"
    return f"{name}/{record.name}/frames {','.join(str(int(f)) for f in frames)}"


class BatchLoader:
    """Maps a global step to this shard's part of that step's batch. Picklable (sent to grain workers)."""

    def __init__(self, config, sources: DataSources, seed: int, shard_index: int = 0, shard_count: int = 1):
        batch_size = config.train.batch_size
        if shard_count < 1 or not 0 <= shard_index < shard_count or batch_size % shard_count:
            raise ValueError(
                f"batch_size {batch_size} must split evenly into shard_count {shard_count} "
                f"(shard_index {shard_index})"
            )
        crop_width = _cfg_get(config.data, "crop_width", 0)
        if crop_width < 0 or crop_width % preprocessing.SIZE_DIVISIBILITY:
            raise ValueError(
                f"config.data.crop_width must be 0 (whole frames) or a positive multiple of "
                f"{preprocessing.SIZE_DIVISIBILITY}, got {crop_width}"
            )
        for field, allowed in (("augmentation", augment.RECIPES), ("subsample", sampling.SUBSAMPLE_MODES)):
            if config.data[field] not in allowed:
                raise ValueError(f"config.data.{field} must be one of {allowed}, got {config.data[field]!r}")
        self.config, self.sources, self.seed = config, sources, seed
        self.crop_width = crop_width
        self.slots = range(shard_index * batch_size // shard_count, (shard_index + 1) * batch_size // shard_count)
        self.shared_memory = False  # set when the loader runs in grain worker processes
        self._plans: dict[int, EpochPlan] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        # Workers get epoch 0's plan (a few arrays, cheaper to send than to rebuild); later ones on demand.
        state["_plans"] = {e: p for e, p in self._plans.items() if e == 0}
        return state

    def plan(self, epoch: int) -> EpochPlan:
        if epoch not in self._plans:
            # Keep epoch 0 (it fixes the epoch length) and the latest one.
            self._plans = {e: p for e, p in self._plans.items() if e == 0}
            self._plans[epoch] = build_epoch_plan(self.config, self.sources, self.seed, epoch)
        return self._plans[epoch]

    def step_samples(self, step: int) -> tuple[EpochPlan, np.ndarray]:
        first = self.plan(0)
        epoch, row = divmod(step, len(first.batches))
        plan = self.plan(epoch)
        row %= len(plan.batches)
        return plan, plan.batches[row]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        plan, samples = self.step_samples(int(step))
        bucket = tuple(int(v) for v in self.sources.buckets[plan.sample_bucket[samples[0]]])
        data = self.config.data
        if self.crop_width:  # never narrower than tall: that would change the coordinate grid's scale
            bucket = (bucket[0], min(bucket[1], max(self.crop_width, bucket[0])))
        b, t, i_max = len(self.slots), data.num_frames, data.max_instances
        # In a worker process the big arrays are allocated in shared memory directly: grain then passes
        # them to the trainer without copying (a full-size batch is ~250 MB, mostly mask slots). New
        # shared memory is zero-filled, like np.zeros.
        big = grain.SharedMemoryArray if self.shared_memory else np.zeros
        batch = {
            "images": big((b, t, *bucket, 3), np.uint8),
            "masks": big((b, i_max, t, *bucket), bool),
            "instance_valid": np.zeros((b, i_max), bool),
            "category_ids": np.zeros((b, i_max), np.int32),
            "ignore": big((b, t, *bucket), bool),
        }
        ids = []
        for k, slot in enumerate(self.slots):
            s = samples[slot]
            d = int(plan.sample_dataset[s])
            name, record = self.sources.names[d], self.sources.records[d][int(plan.sample_record[s])]
            frames = plan.sample_frames[s]
            cid = clip_id(name, record, frames)
            rng = np.random.default_rng([self.seed, int(step), slot, 0xC11B])
            try:
                out = {key: value[k] for key, value in batch.items()}
                load_clip(record, frames, self.sources.cfgs[d], data, rng, bucket, out)
            except Exception as err:
                src = getattr(record, "source", "") or "?"
                raise ValueError(f"step {step}: failed to load clip {cid} (annotations {src}): {err}") from err
            ids.append(cid)
        batch["clip_ids"] = np.asarray(ids)
        return batch


def build_train_iterator(
    config,
    *,
    seed: int,
    start_step: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    records_by_dataset: Mapping[str, Sequence[Any]] | None = None,
    num_workers: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields the training batches of steps ``start_step, start_step + 1, ...`` (endless).

    Each batch: ``images [B, T, H, W, 3] uint8`` BGR (resized, padded with ``PAD_VALUE_BGR`` to the
    batch's bucket), ``masks [B, I_max, T, H, W] bool``, ``instance_valid [B, I_max] bool``,
    ``category_ids [B, I_max] int32`` (0 in empty slots), ``ignore [B, T, H, W] bool`` and
    ``clip_ids [B]`` str (``dataset/video/frames ...``). With ``shard_count > 1`` only this shard's
    ``B // shard_count`` clips. ``num_workers`` overrides ``config.data.num_workers`` (0: load in this
    process with read threads only).
    """
    sources = load_sources(config, records_by_dataset)
    loader = BatchLoader(config, sources, seed, shard_index, shard_count)
    loader.plan(0)  # fail early on bad datasets, in the calling process
    workers = config.data.num_workers if num_workers is None else num_workers
    loader.shared_memory = workers > 0
    prefetch = max(1, int(config.data.prefetch))
    ds = grain.MapDataset.range(start_step, start_step + 2**40).map(loader)
    # Read threads in every process: each clip spends most of its time in OpenCV/imgaug, which release the GIL.
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2 if workers == 0 else 1, prefetch_buffer_size=prefetch))
    if workers > 0:
        if not flags.FLAGS.is_parsed():
            # grain's worker processes read absl flags; outside an absl app (tests, notebooks) use the defaults.
            flags.FLAGS(["stemseg_jax"], known_only=True)
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch),
            worker_init_fn=_init_worker,
        )
    return _closing(iter(it_ds))


def _init_worker(worker_index: int, worker_count: int) -> None:
    del worker_index
    # One OpenCV thread per worker process: with as many workers as cores, more threads only contend.
    cv2.setNumThreads(1 if worker_count > 1 else 2)


def _closing(iterator) -> Iterator[dict[str, np.ndarray]]:
    # Stops grain's workers and frees its shared-memory buffers as soon as the caller drops the iterator
    # (instead of at interpreter exit, where grain's clean-up fails noisily).
    try:
        yield from iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
