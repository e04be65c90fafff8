"""DAVIS 2017/2019 unsupervised J&F, reproducing davis2017-evaluation (task "unsupervised").

Protocol (evaluation_protocols.md §1): per sequence, J (IoU without void pixels) and F (seg2bmap boundary
F-measure, tolerance ceil(0.008 * diagonal), disk dilation) for every (proposal, GT object, frame);
proposals matched to GT objects by a Hungarian assignment on (mean J + mean F) / 2; Mean / Recall / Decay
per object; global numbers are plain means over all GT objects of all sequences.

Why not the toolkit's own loops: it computes every (proposal, object) pair on full frames. Here all J
intersections of a frame come from one joint histogram of the two label maps, and boundaries / dilations
are computed on each mask's bounding-box window only (exact: outside the window both are zero).
"""

from __future__ import annotations

import math
import os
import time

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from stemseg_jax.io import read_index_png, read_text

MAX_PROPOSALS = 20
BOUND_TH = 0.008
VOID = 255


# ----------------------------------------------------------------------------------------------- primitives
def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """Boundary map of a binary mask, as the toolkit's ``_seg2bmap`` (Martin et al.): ``[H, W]`` -> ``[H, W]`` bool.

    A pixel is on the boundary if it differs from its right, lower or lower-right neighbour; the last row
    compares only with the right neighbour, the last column only with the lower one; the corner is 0.
    """
    seg = np.asarray(mask, dtype=bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def boundary_radius(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Dilation radius in pixels: ``bound_th`` itself if >= 1, else ceil(bound_th * image diagonal)."""
    return int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(height, width)))


def disk(radius: int) -> np.ndarray:
    """``skimage.morphology.disk(radius)``: ``[2r+1, 2r+1] uint8``, 1 where x^2 + y^2 <= r^2."""
    r = np.arange(-radius, radius + 1)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).astype(np.uint8)


def f_measure(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH) -> float:
    """Full-frame boundary F of one mask pair (the toolkit's ``f_measure``); the slow reference path."""
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    keep = np.ones_like(pred) if void is None else ~np.asarray(void, bool)
    radius = boundary_radius(*pred.shape, bound_th)
    fb = seg2bmap(pred & keep)
    gb = seg2bmap(gt & keep)
    fd = cv2.dilate(fb.astype(np.uint8), disk(radius)).astype(bool)
    gd = cv2.dilate(gb.astype(np.uint8), disk(radius)).astype(bool)
    return _f_from_counts(int(fb.sum()), int(gb.sum()), int((fb & gd).sum()), int((gb & fd).sum()))


def _f_from_counts(n_fg: int, n_gt: int, fg_match: int, gt_match: int) -> float:
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision, recall = fg_match / n_fg, gt_match / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


class _Boundary:
    """Boundary and dilated boundary of one mask, stored on windows ``(y0, x0, array)``."""

    __slots__ = ("b", "by", "bx", "d", "dy", "dx", "n")

    def __init__(self, seg: np.ndarray, radius: int, kernel: np.ndarray):
        h, w = seg.shape
        ys, xs = np.nonzero(seg.any(axis=1))[0], np.nonzero(seg.any(axis=0))[0]
        # Boundary pixels lie in rows ymin-1..ymax, columns xmin-1..xmax; they need one more row/column.
        y0, y1 = max(ys[0] - 1, 0), min(ys[-1] + 2, h)
        x0, x1 = max(xs[0] - 1, 0), min(xs[-1] + 2, w)
        self.b, self.by, self.bx = seg2bmap(seg[y0:y1, x0:x1]), y0, x0
        self.n = int(self.b.sum())
        dy0, dy1 = max(y0 - radius, 0), min(y1 + radius, h)
        dx0, dx1 = max(x0 - radius, 0), min(x1 + radius, w)
        padded = np.zeros((dy1 - dy0, dx1 - dx0), np.uint8)
        padded[y0 - dy0 : y1 - dy0, x0 - dx0 : x1 - dx0] = self.b
        self.d, self.dy, self.dx = cv2.dilate(padded, kernel).view(bool), dy0, dx0  # 0/1 uint8: a free view


def _count_inside(boundary: _Boundary, dilated: _Boundary) -> int:
    """Number of ``boundary``'s pixels inside ``dilated``'s dilated boundary (window intersection)."""
    b, d = boundary, dilated
    y0, x0 = max(b.by, d.dy), max(b.bx, d.dx)
    y1 = min(b.by + b.b.shape[0], d.dy + d.d.shape[0])
    x1 = min(b.bx + b.b.shape[1], d.dx + d.d.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0
    bw = b.b[y0 - b.by : y1 - b.by, x0 - b.bx : x1 - b.bx]
    dw = d.d[y0 - d.dy : y1 - d.dy, x0 - d.dx : x1 - d.dx]
    return int(np.count_nonzero(bw & dw))


def frame_scores(
    res_labels: np.ndarray, gt_labels: np.ndarray, n_res: int, n_gt: int, bound_th: float = BOUND_TH
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of every (proposal, GT object) pair of one frame.

    Args:
      res_labels: ``[H, W]`` proposal ids (0 = background); ids above ``n_res`` are ignored.
      gt_labels: ``[H, W]`` GT ids with 255 = void; ids above ``n_gt`` are ignored (treated as background).
      n_res, n_gt: numbers of proposals / GT objects (ids 1..n).
    Returns:
      ``(J, F)``, each ``[n_res, n_gt]`` float64.
    """
    void = gt_labels == VOID
    gt = gt_labels.astype(np.int32)
    gt[void | (gt > n_gt)] = 0
    res = res_labels.astype(np.int32)
    res[void | (res > n_res)] = 0
    code = res * (n_gt + 1)
    code += gt
    joint = np.bincount(code.ravel(), minlength=(n_res + 1) * (n_gt + 1))
    joint = joint.reshape(n_res + 1, n_gt + 1)
    inter = joint[1:, 1:]
    union = joint[1:, :].sum(1)[:, None] + joint[:, 1:].sum(0)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))

    radius = boundary_radius(*gt_labels.shape, bound_th)
    kernel = disk(radius)
    res_present = np.nonzero(joint[1:, :].sum(1))[0]
    gt_present = np.nonzero(joint[:, 1:].sum(0))[0]
    res_b = {k: _Boundary(res == k + 1, radius, kernel) for k in res_present}
    gt_b = {k: _Boundary(gt == k + 1, radius, kernel) for k in gt_present}
    f = np.empty((n_res, n_gt))
    for p in range(n_res):
        for g in range(n_gt):
            rb, gb = res_b.get(p), gt_b.get(g)
            n_fg = rb.n if rb is not None else 0
            n_gtb = gb.n if gb is not None else 0
            if n_fg and n_gtb:
                f[p, g] = _f_from_counts(n_fg, n_gtb, _count_inside(rb, gb), _count_inside(gb, rb))
            else:
                f[p, g] = _f_from_counts(n_fg, n_gtb, 0, 0)
    return j, f


def db_statistics(values: np.ndarray, decay_mode: str = "official") -> tuple[float, float, float]:
    """Mean, Recall (> 0.5) and Decay of one object's per-frame values.

    Decay = mean of the first quarter - mean of the last; bin edges ``round(linspace(1, N, 5) + 1e-10) - 1``
    (round half up). ``decay_mode="official"`` keeps the toolkit's uint8 cast of the edges (videos over 256
    frames get an empty last bin and a NaN decay); ``"fixed"`` uses int64 edges.
    """
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"), _quiet():
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
        ids = np.round(np.linspace(1, len(values), 5) + 1e-10) - 1
        if decay_mode == "official":
            ids = ids.astype(np.uint8)
        elif decay_mode == "fixed":
            ids = ids.astype(np.int64)
        else:
            raise ValueError(f"decay_mode must be 'official' or 'fixed', got {decay_mode!r}")
        bins = [values[int(ids[i]) : int(ids[i + 1]) + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


class _quiet:
    """Silences numpy's 'mean of empty slice' warnings, which the toolkit silences too."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def evaluate_sequence(
    gt_maps: np.ndarray, res_maps: np.ndarray, bound_th: float = BOUND_TH, max_proposals: int = MAX_PROPOSALS,
    where: str = "sequence",
) -> dict:
    """Unsupervised evaluation of one sequence from label maps.

    Args:
      gt_maps: ``[T, H, W]`` GT ids (255 = void); the number of objects is the largest id of frame 0.
      res_maps: ``[T, H, W]`` proposal ids; the number of proposals is the largest id in any frame.
    Returns:
      dict with ``J`` and ``F`` ``[n_gt, T]`` per-frame values of the matched pairs (rows in the order of the
      matched proposal index, as the toolkit orders them), ``pairs`` ``[(proposal id, GT object id)]`` in the
      same row order, ``n_objects``, ``n_proposals``.
    """
    gt_maps = np.asarray(gt_maps)
    res_maps = np.asarray(res_maps)
    first = gt_maps[0]
    n_gt = int(np.where(first == VOID, 0, first).max())
    n_res = int(res_maps.max()) if res_maps.size else 0
    if n_res > max_proposals:
        raise ValueError(f"{where}: {n_res} proposals, the DAVIS unsupervised toolkit accepts at most {max_proposals}")
    n_pad = max(n_res, n_gt)  # missing proposals are empty masks (the toolkit zero-pads)
    t_len = gt_maps.shape[0]
    j_all = np.zeros((n_pad, n_gt, t_len))
    f_all = np.zeros((n_pad, n_gt, t_len))
    for t in range(t_len):
        j_all[:, :, t], f_all[:, :, t] = frame_scores(res_maps[t], gt_maps[t], n_pad, n_gt, bound_th)
    score = (j_all.mean(axis=2) + f_all.mean(axis=2)) / 2
    rows, cols = linear_sum_assignment(-score) if n_gt else (np.zeros(0, int), np.zeros(0, int))
    return {
        "J": j_all[rows, cols, :],
        "F": f_all[rows, cols, :],
        "pairs": [(int(r) + 1, int(c) + 1) for r, c in zip(rows, cols)],
        "n_objects": n_gt,
        "n_proposals": n_res,
    }


# ----------------------------------------------------------------------------------------------- dataset level
def list_sequences(gt_root: str, split: str = "val") -> list[str]:
    """Sequences of ``ImageSets/2017/<split>.txt`` (2019 list for test-dev / test-challenge)."""
    year = "2019" if split in ("test-dev", "test-challenge") else "2017"
    path = os.path.join(gt_root, "ImageSets", year, f"{split}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DAVIS image set list not found: {path}")
    return [line.strip() for line in read_text(path).split("\n") if line.strip()]


def gt_frame_names(gt_root: str, seq: str) -> list[str]:
    folder = os.path.join(gt_root, "Annotations_unsupervised", "480p", seq)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"DAVIS annotation folder not found: {folder}")
    names = sorted(os.path.splitext(n)[0] for n in os.listdir(folder) if n.endswith(".png"))
    if not names:
        raise FileNotFoundError(f"no annotation PNGs in {folder}")
    return names


def load_gt_sequence(gt_root: str, seq: str) -> tuple[list[str], np.ndarray]:
    names = gt_frame_names(gt_root, seq)
    folder = os.path.join(gt_root, "Annotations_unsupervised", "480p", seq)
    return names, np.stack([read_index_png(os.path.join(folder, n + ".png")) for n in names])


def load_result_sequence(results_dir: str, seq: str, names: list[str], shape: tuple[int, int]) -> np.ndarray:
    folder = os.path.join(results_dir, seq)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"results for sequence {seq} not found: {folder}")
    maps = []
    for n in names:
        path = os.path.join(folder, n + ".png")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"missing result frame {path} (sequence {seq}, frame {n})")
        m = read_index_png(path)
        if m.shape != shape:
            raise ValueError(f"{path}: mask size {m.shape} differs from the ground truth's {shape} (frame {n})")
        maps.append(m)
    return np.stack(maps)


def evaluate_davis(
    gt_root: str, results_dir: str, split: str = "val", sequences=None, bound_th: float = BOUND_TH,
    decay_mode: str = "official",
) -> dict:
    """DAVIS unsupervised J&F over a results folder.

    Args:
      gt_root: DAVIS root with ``Annotations_unsupervised/480p`` and ``ImageSets``.
      results_dir: ``<seq>/<frame>.png`` proposal maps.
      split: image set name (``val``: 2017 list); ignored when ``sequences`` is given.
      decay_mode: ``"official"`` (uint8 bin quirk) or ``"fixed"`` (correct on videos > 256 frames).
    Returns:
      ``{"benchmark": "davis", "global": {J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay},
      "per_object": [{"sequence", "object" (GT id), "label" (the toolkit's <seq>_<k>), "proposal",
      J-Mean, F-Mean, J&F-Mean, J-Recall, J-Decay, F-Recall, F-Decay}], "per_sequence" (the same statistics
      averaged over each sequence's objects; the global numbers weight objects, not sequences), "sequences",
      "num_frames",
      "timings" (seconds per stage), "seconds"}``.
    """
    start = time.perf_counter()
    seqs = list(sequences) if sequences is not None else list_sequences(gt_root, split)
    rows = []
    timings = {"read_png": 0.0, "j_and_f": 0.0}
    n_frames = 0
    for seq in seqs:
        t0 = time.perf_counter()
        names, gt_maps = load_gt_sequence(gt_root, seq)
        res_maps = load_result_sequence(results_dir, seq, names, gt_maps.shape[1:])
        t1 = time.perf_counter()
        out = evaluate_sequence(gt_maps, res_maps, bound_th, where=os.path.join(results_dir, seq))
        timings["read_png"] += t1 - t0
        timings["j_and_f"] += time.perf_counter() - t1
        n_frames += len(names)
        for k, (j, f, (proposal, obj)) in enumerate(zip(out["J"], out["F"], out["pairs"])):
            jm, jr, jd = db_statistics(j, decay_mode)
            fm, fr, fd = db_statistics(f, decay_mode)
            rows.append({
                "sequence": seq, "object": obj, "label": f"{seq}_{k + 1}", "proposal": proposal,
                "J&F-Mean": (jm + fm) / 2, "J-Mean": jm, "J-Recall": jr, "J-Decay": jd,
                "F-Mean": fm, "F-Recall": fr, "F-Decay": fd,
            })
    if not rows:
        raise ValueError(f"no GT objects in the evaluated DAVIS sequences under {gt_root}")

    def mean(key):
        return float(np.mean([r[key] for r in rows]))

    stats = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
    glob = {k: mean(k) for k in stats}
    glob = {"J&F-Mean": (glob["J-Mean"] + glob["F-Mean"]) / 2, **glob}
    per_seq = {}
    for seq in seqs:
        objs = [r for r in rows if r["sequence"] == seq]
        if objs:
            s = {k: float(np.mean([r[k] for r in objs])) for k in stats}
            per_seq[seq] = {"J&F-Mean": (s["J-Mean"] + s["F-Mean"]) / 2, **s, "objects": len(objs)}
    return {
        "benchmark": "davis", "global": glob, "per_object": rows, "per_sequence": per_seq, "sequences": seqs,
        "num_frames": n_frames,
        "timings": timings, "seconds": time.perf_counter() - start,
    }


def format_table(result: dict) -> str:
    """The toolkit's two tables (global, per object), 3 decimals."""
    g = result["global"]
    keys = list(g)
    lines = [" ".join(f"{k:>9}" for k in keys), " ".join(f"{g[k]:>9.3f}" for k in keys), ""]
    cols = ["J-Mean", "F-Mean"]
    lines.append(f"{'Sequence':<24} " + " ".join(f"{c:>7}" for c in cols))
    for r in result["per_object"]:
        lines.append(f"{r['label']:<24} " + " ".join(f"{r[c]:>7.3f}" for c in cols))
    return "\n".join(lines)
