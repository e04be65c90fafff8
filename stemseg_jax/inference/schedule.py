"""Which frames go into which clip at inference (spec §6.2), and the short-video repeat rule (§6.3)."""

from __future__ import annotations

import numpy as np


def clip_schedule(num_frames_video: int, clip_len: int, overlap: int) -> list[list[int]]:
    """Splits a video of ``num_frames_video`` frames into clips of ``clip_len`` frames.

    Clips start at ``0, s, 2s, ...`` with stride ``s = clip_len - overlap`` while they fit. If the
    last of them does not end at the video's last frame, one more clip ``[L - T, L - 1]`` is appended;
    its overlap with its predecessor can exceed ``overlap``. A video shorter than a clip gives one clip
    made of frame 0 repeated ``T - L`` times followed by ``0 .. L - 1`` (collapse it with
    ``collapse_repeated_frames`` after the network pass).

    Returns a list of clips, each a list of ``clip_len`` frame indices in increasing order.
    """
    length, t, o = int(num_frames_video), int(clip_len), int(overlap)
    if length <= 0:
        raise ValueError(f"a video needs at least one frame, got num_frames_video={num_frames_video}")
    if t <= 0:
        raise ValueError(f"clip_len must be positive, got {clip_len}")
    if not 0 <= o < t:
        raise ValueError(f"overlap must be in [0, clip_len), got overlap={overlap} with clip_len={clip_len}")
    if length < t:
        return [[0] * (t - length) + list(range(length))]
    stride = t - o
    clips = [list(range(start, start + t)) for start in range(0, length - t + 1, stride)]
    if clips[-1][-1] != length - 1:
        clips.append(list(range(length - t, length)))
    return clips


def collapse_repeated_frames(frame_indices: list[int]) -> tuple[list[int], np.ndarray]:
    """The unique frames of a clip and, for each, the position of its **last** occurrence.

    The official inference keeps the network output of the last copy of a repeated frame for the
    embeddings, bandwidths and seediness (spec §6.3), so ``outputs[positions]`` turns a ``[T, ...]``
    clip output into the ``[T', ...]`` one that ``cluster_clip`` and ``TrackChainer.add_clip`` expect,
    with ``T'`` = the number of unique frames. Semantic logits instead accumulate over every copy; that
    is the caller's business.

    Returns ``(unique_frames, positions)``: sorted unique frame indices and an int array ``[T']``.
    """
    last = {}
    for position, frame in enumerate(frame_indices):
        last[int(frame)] = position
    unique_frames = sorted(last)
    return unique_frames, np.asarray([last[f] for f in unique_frames], dtype=np.int64)
