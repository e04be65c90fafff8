"""Image summaries of a training clip (the frame, its seediness map and its clustered instances), and the
clean-up of a killed run's TensorBoard event files before it resumes."""

from __future__ import annotations

import os
import struct

import jax.numpy as jnp
import numpy as np

from stemseg_jax.inference.clustering import cluster_clip, clustering_options, free_dim_bandwidths
from stemseg_jax.model.outputs import bandwidths, foreground_mask

PALETTE = np.random.default_rng(3).integers(64, 256, size=(256, 3)).astype(np.uint8)


def clip_summary_images(config, apply_fn, state: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """``images [1,T,H,W,3]`` uint8 BGR -> ``{"frame", "seediness", "instances"}`` RGB uint8 ``[h, w, 3]``.

    ``apply_fn`` is the model's (jitted) ``apply``."""
    outputs = apply_fn({"params": state["params"], **state["constants"]}, jnp.asarray(images))
    fg = foreground_mask(outputs["semseg_logits"], outputs["seediness"], config.model,
                         config.inference.seediness_fg_threshold)
    labels = cluster_clip(
        outputs["embeddings"][0], bandwidths(outputs["bandwidth_logits"][0], jnp), outputs["seediness"][0], fg[0],
        free_dim_bandwidths(config), **clustering_options(config),
    )
    t = images.shape[1] // 2
    frame = images[0, t, ::4, ::4, ::-1]
    seed = (np.asarray(outputs["seediness"][0, t]) * 255).astype(np.uint8)
    lab = np.asarray(labels[t])
    inst = np.where(lab[..., None] >= 0, PALETTE[np.maximum(lab, 0) % 256], 0).astype(np.uint8)
    h, w = lab.shape
    seed_rgb = np.repeat(seed[..., None], 3, -1)
    return {"frame": np.ascontiguousarray(frame[:h, :w]), "seediness": seed_rgb, "instances": inst}


# ------------------------------------------------------------------------------- event files on resume

# A TFRecord: uint64 length, uint32 masked CRC-32C of the length, the data, uint32 masked CRC-32C of the data.
_LENGTH = struct.Struct("<Q")
_HEADER_BYTES, _FOOTER_BYTES = 12, 4


def read_event_records(path: str) -> tuple[list[bytes], bool]:
    """The complete records of TensorBoard event file ``path`` (each its serialized ``Event``) up to the first
    truncated or corrupt one, and whether the whole file was read (False: a killed writer's torn tail)."""
    from tensorboardX.record_writer import masked_crc32c

    with open(path, "rb") as f:
        data = f.read()
    records, pos = [], 0
    while pos < len(data):
        header = data[pos: pos + _HEADER_BYTES]
        if len(header) < _HEADER_BYTES or struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
            return records, False
        (length,) = _LENGTH.unpack(header[:8])
        body = data[pos + _HEADER_BYTES: pos + _HEADER_BYTES + length]
        footer = data[pos + _HEADER_BYTES + length: pos + _HEADER_BYTES + length + _FOOTER_BYTES]
        if len(body) < length or len(footer) < _FOOTER_BYTES or struct.unpack("<I", footer)[0] != masked_crc32c(body):
            return records, False
        records.append(body)
        pos += _HEADER_BYTES + length + _FOOTER_BYTES
    return records, True


def _record_bytes(body: bytes) -> bytes:
    from tensorboardX.record_writer import masked_crc32c

    header = _LENGTH.pack(len(body))
    return header + struct.pack("<I", masked_crc32c(header)) + body + struct.pack("<I", masked_crc32c(body))


def drop_events_after(logdir: str, step: int) -> int:
    """Rewrites the event files of ``logdir`` without their events past ``step`` and without a torn last
    record; returns the number of events dropped.

    A run killed after its checkpoint of ``step`` has logged later steps (and may have died mid-record);
    resumed at ``step``, it logs those steps again into a new event file. Without this, every reader of the
    folder sees them twice (TensorBoard's own purge on a ``SessionLog.START`` helps TensorBoard only) and
    some stop at the torn record. Each file is replaced atomically, so a kill during the clean-up leaves
    either the old or the new file."""
    from tensorboardX.proto.event_pb2 import Event

    from stemseg_jax.io import write_bytes

    if not os.path.isdir(logdir):
        return 0
    dropped = 0
    for name in sorted(os.listdir(logdir)):
        path = os.path.join(logdir, name)
        if "tfevents" not in name or not os.path.isfile(path):
            continue
        records, whole = read_event_records(path)
        kept = [r for r in records if Event.FromString(r).step <= step]
        if whole and len(kept) == len(records):
            continue
        dropped += len(records) - len(kept) + (0 if whole else 1)
        write_bytes(path, b"".join(_record_bytes(r) for r in kept))
    return dropped
