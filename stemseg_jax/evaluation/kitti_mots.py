"""KITTI-MOTS: sMOTSA / MOTSA / MOTSP ... with mots_tools semantics, and HOTA / IDF1 through TrackEval.

mots_tools (not on PyPI) is reimplemented here from its definition (evaluation_protocols.md §3.2):
per class and frame a GT / tracker pair is a true positive when mask IoU > 0.5 (unique, masks do not
overlap); an unmatched tracker mask more than half inside the merged ignore region (class 10) is dropped;
ID switches count changes of the matched tracker id against the last matched one.

HOTA, DetA, AssA and IDF1 come from the ``trackeval`` package's metric classes (1.3.0 runs on numpy 2),
fed with TrackEval's own KITTI-MOTS preprocessing (Hungarian at IoU >= 0.5, then the ignore-region rule)
built here from the same IoU matrices, so no temp folders or config plumbing are needed.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from stemseg_jax.evaluation.writers import KITTI_CAR, KITTI_IGNORE, KITTI_PEDESTRIAN, check_no_overlap
from stemseg_jax.io import checked_rle, parse_mots_line, read_text

CLASSES = {"car": KITTI_CAR, "pedestrian": KITTI_PEDESTRIAN}
VAL_SEQUENCES = ["0002", "0006", "0007", "0008", "0010", "0013", "0014", "0016", "0018"]
SPLITS = {
    "val": VAL_SEQUENCES,
    "train": [f"{i:04d}" for i in range(21) if f"{i:04d}" not in VAL_SEQUENCES],
    "fulltrain": [f"{i:04d}" for i in range(21)],
}
_EPS = np.finfo("float").eps


# ----------------------------------------------------------------------------------------------- loading
def load_txt(path: str, allowed_classes, max_frame: int | None = None, size: dict | None = None) -> dict:
    """Reads a MOTS txt file into ``{frame: [(object_id, class_id, rle)]}`` and validates it.

    Raises with the file, line and frame on: malformed lines or RLEs (non-UTF-8 bytes; ``counts`` whose runs
    do not add up to the header's h * w), a class outside ``allowed_classes``, a frame beyond ``max_frame``, a
    mask size other than ``size[frame]`` (``size`` is filled from the first mask of a frame when it is a dict),
    a repeated object id in a frame, overlapping masks in a frame.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing sequence file {path}")
    frames = defaultdict(list)
    for n, line in enumerate(read_text(path).split("\n"), 1):
        parsed = parse_mots_line(line, f"{path}, line {n}")
        if parsed is None:
            continue
        frame, obj, cls, h, w, counts = parsed
        if cls not in allowed_classes:
            raise ValueError(f"{path}, line {n}, frame {frame}: class {cls} not in {sorted(allowed_classes)}")
        if frame < 0 or (max_frame is not None and frame > max_frame):
            raise ValueError(f"{path}, line {n}: frame {frame} outside the sequence's 0..{max_frame}")
        if size is not None:
            expected = size.setdefault(frame, (h, w))
            if (h, w) != tuple(expected):
                raise ValueError(f"{path}, line {n}, frame {frame}: mask size {(h, w)} differs from {expected}")
        # pycocotools' merge / iou loop for minutes on counts of another mask size: checked first.
        rle = checked_rle(counts, h, w, f"{path}, line {n}, frame {frame}")
        frames[frame].append((obj, cls, rle))
    for frame, objs in frames.items():
        ids = [o for o, _, _ in objs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path}, frame {frame}: an object id appears twice")
        sizes = {tuple(r["size"]) for _, _, r in objs}
        if len(sizes) > 1:
            raise ValueError(f"{path}, frame {frame}: masks of different sizes {sorted(sizes)}")
        try:
            check_no_overlap([r for _, _, r in objs], f"{path}, frame {frame}")
        except ValueError as err:
            raise ValueError(f"{err} (the MOTS format forbids overlapping masks)") from None
    return dict(frames)


def read_seqmap(path: str) -> dict[str, int]:
    """``name empty 000000 <last_frame>`` lines -> ``{name: last_frame}``."""
    out = {}
    for n, line in enumerate(read_text(path).split("\n"), 1):
        f = line.split()
        if not f:
            continue
        if len(f) < 4 or not f[3].isdigit():
            raise ValueError(f"{path}, line {n}: expected 'name empty first last' (last a frame number)")
        out[f[0]] = int(f[3])
    return out


def image_dir(gt_root: str, seq: str) -> str | None:
    """``image_02/<seq>`` or ``training/image_02/<seq>`` (the KITTI layout) if present."""
    for sub in ("image_02", os.path.join("training", "image_02")):
        path = os.path.join(gt_root, sub, seq)
        if os.path.isdir(path):
            return path
    return None


def _gt_dir(gt_root: str) -> str:
    sub = os.path.join(gt_root, "instances_txt")
    return sub if os.path.isdir(sub) else gt_root


def sequence_lengths(gt_root: str, sequences=None, seqmap: str | None = None) -> dict[str, int]:
    """``{seq: last_frame}``: from ``seqmap``; else the frame count of ``[training/]image_02/<seq>`` (KITTI);
    else the last GT frame (frames after the last annotated one then go unevaluated)."""
    gt_dir = _gt_dir(gt_root)
    if isinstance(sequences, str) or (sequences is not None and len(sequences) == 1 and sequences[0] in SPLITS):
        name = sequences if isinstance(sequences, str) else sequences[0]
        if name not in SPLITS:
            raise ValueError(f"unknown KITTI-MOTS split {name!r}; expected one of {sorted(SPLITS)} or a list")
        sequences = SPLITS[name]
    if seqmap is not None:
        last = read_seqmap(seqmap)
        seqs = list(sequences) if sequences is not None else list(last)
        missing = [s for s in seqs if s not in last]
        if missing:
            raise ValueError(f"{seqmap}: no entry for sequences {missing}")
        return {s: last[s] for s in seqs}
    if sequences is None:
        sequences = sorted(n[:-4] for n in os.listdir(gt_dir) if n.endswith(".txt"))
        if not sequences:
            raise FileNotFoundError(f"no KITTI-MOTS GT files (<seq>.txt) in {gt_dir}")
    out = {}
    for s in sequences:
        img_dir = image_dir(gt_root, s)
        if img_dir is not None:
            out[s] = len([n for n in os.listdir(img_dir) if n.lower().endswith((".png", ".jpg"))]) - 1
        else:
            frames = load_txt(os.path.join(gt_dir, f"{s}.txt"), (KITTI_CAR, KITTI_PEDESTRIAN, KITTI_IGNORE))
            out[s] = max(frames, default=-1)
    return out


# ----------------------------------------------------------------------------------------------- per sequence
def _ious(a: list, b: list, crowd: bool = False) -> np.ndarray:
    if not a or not b:
        return np.zeros((len(a), len(b)))
    return np.asarray(mask_utils.iou(a, b, [int(crowd)] * len(b)), np.float64).reshape(len(a), len(b))


def _sequence_frames(gt: dict, res: dict, last_frame: int, class_id: int):
    """Per frame: GT ids, tracker ids, IoU ``[n_gt, n_tr]`` and tracker-in-ignore ratio ``[n_tr]``."""
    for f in range(last_frame + 1):
        g = [(o, r) for o, c, r in gt.get(f, []) if c == class_id]
        t = [(o, r) for o, c, r in res.get(f, []) if c == class_id]
        ignore = [r for _, c, r in gt.get(f, []) if c == KITTI_IGNORE]
        iou = _ious([r for _, r in g], [r for _, r in t])
        if ignore and t:
            region = mask_utils.merge(ignore, intersect=False) if len(ignore) > 1 else ignore[0]
            ioa = _ious([r for _, r in t], [region], crowd=True)[:, 0]
        else:
            ioa = np.zeros(len(t))
        yield np.array([o for o, _ in g], np.int64), np.array([o for o, _ in t], np.int64), iou, ioa


def mots_tools_sequence(frames: list) -> dict:
    """mots_tools' ``compute_MOTS_metrics_per_sequence`` counts from ``_sequence_frames`` output."""
    c = defaultdict(float)
    traj = defaultdict(list)
    gt_ids, tr_ids = set(), set()
    for g_ids, t_ids, iou, ioa in frames:
        gt_ids.update(g_ids.tolist())
        tr_ids.update(t_ids.tolist())
        c["n_gt"] += len(g_ids)
        c["n_tr"] += len(t_ids)
        for gid in g_ids:
            traj[int(gid)].append(-1)
        rows, cols = np.nonzero(iou > 0.5)
        tp = len(rows)
        cost = float(iou[rows, cols].sum())
        for r, col in zip(rows, cols):
            traj[int(g_ids[r])][-1] = int(t_ids[col])
        valid = np.zeros(len(t_ids), bool)
        valid[cols] = True
        ignored = int(np.count_nonzero((ioa > 0.5) & ~valid))
        c["tp"] += tp
        c["total_cost"] += cost
        c["n_itr"] += ignored
        c["fn"] += len(g_ids) - tp
        c["fp"] += len(t_ids) - tp - ignored
        c["MODSP_sum"] += cost / tp if tp else 1.0
        c["frames"] += 1
    for g in traj.values():
        if all(x == -1 for x in g):
            c["ML_count"] += 1
            continue
        last = g[0]
        tracked = 1 if g[0] >= 0 else 0
        f = 0
        for f in range(1, len(g)):
            if last != g[f] and last != -1 and g[f] != -1:
                c["id_switches"] += 1
            if f < len(g) - 1 and g[f - 1] != g[f] and last != -1 and g[f] != -1 and g[f + 1] != -1:
                c["fragments"] += 1
            if g[f] != -1:
                tracked += 1
                last = g[f]
        if len(g) > 1 and g[f - 1] != g[f] and last != -1 and g[f] != -1:
            c["fragments"] += 1
        ratio = tracked / len(g)
        c["MT_count" if ratio > 0.8 else "ML_count" if ratio < 0.2 else "PT_count"] += 1
    c["n_gt_trajectories"] = len(gt_ids)
    c["n_tr_trajectories"] = len(tr_ids)
    return dict(c)


def mots_tools_metrics(c: dict) -> dict:
    """mots_tools' ``compute_prec_rec_clearmot`` on (summed) counts."""
    g = defaultdict(float, c)
    tp, fp, fn, ids, n_gt = g["tp"], g["fp"], g["fn"], g["id_switches"], g["n_gt"]
    out = {k: int(g[k]) for k in ("tp", "fp", "fn", "id_switches", "fragments", "n_gt", "n_tr", "n_itr",
                                  "n_gt_trajectories", "n_tr_trajectories")}
    if fp + tp == 0 or tp + fn == 0:
        recall = precision = 0.0
    else:
        recall, precision = tp / (tp + fn), tp / (fp + tp)
    out.update(recall=recall, precision=precision,
               F1=0.0 if recall + precision == 0 else 2 * precision * recall / (precision + recall),
               FAR=fp / g["frames"] if g["frames"] else float("nan"))
    if n_gt == 0:
        out.update(MOTSA=-math.inf, MODSA=-math.inf, sMOTSA=-math.inf, MOTSAL=-math.inf)
    else:
        out.update(MOTSA=1 - (fn + fp + ids) / n_gt, MODSA=1 - (fn + fp) / n_gt,
                   sMOTSA=(g["total_cost"] - fp - ids) / n_gt,
                   MOTSAL=1 - (fn + fp + (math.log10(ids) if ids else 0)) / n_gt)
    out["MOTSP"] = math.inf if tp == 0 else g["total_cost"] / tp
    out["MODSP"] = g["MODSP_sum"] / g["frames"] if g["frames"] else float("nan")
    n_traj = g["n_gt_trajectories"]
    for k in ("MT", "PT", "ML"):
        out[k] = g[f"{k}_count"] / n_traj if n_traj else 0.0
    return out


def trackeval_sequence_data(frames: list) -> dict:
    """TrackEval's ``KittiMOTS.get_preprocessed_seq_data`` on ``_sequence_frames`` output (one class)."""
    gt_ids, tr_ids, sims = [], [], []
    for g, t, iou, ioa in frames:
        unmatched = np.arange(len(t))
        if len(g) and len(t):
            score = iou.copy()
            score[score < 0.5 - _EPS] = -10000
            rows, cols = linear_sum_assignment(-score)
            unmatched = np.delete(unmatched, cols[score[rows, cols] > 0 + _EPS])
        remove = unmatched[ioa[unmatched] > 0.5 + _EPS]
        gt_ids.append(g)
        tr_ids.append(np.delete(t, remove))
        sims.append(np.delete(iou, remove, axis=1))
    data = {"num_timesteps": len(frames), "similarity_scores": sims}
    for key, ids in (("gt", gt_ids), ("tracker", tr_ids)):
        unique = np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
        relabel = {int(u): k for k, u in enumerate(unique)}
        data[f"{key}_ids"] = [np.array([relabel[int(i)] for i in x], int) for x in ids]
        data[f"num_{key}_ids"] = len(unique)
        data[f"num_{key}_dets"] = int(sum(len(x) for x in ids))
    return data


def _trackeval_metrics():
    from trackeval.metrics import CLEAR, HOTA, Identity

    return {"HOTA": HOTA(), "CLEAR": CLEAR({"PRINT_CONFIG": False}), "Identity": Identity({"PRINT_CONFIG": False})}


# ----------------------------------------------------------------------------------------------- top level
def evaluate_kitti_mots(gt_root: str, results_dir: str, sequences=None, seqmap: str | None = None) -> dict:
    """KITTI-MOTS metrics per class (car, pedestrian).

    Args:
      gt_root: folder with ``instances_txt/<seq>.txt`` (or the txt files themselves), optionally
        ``image_02/<seq>/`` to give sequence lengths.
      results_dir: ``<seq>.txt`` per sequence (a missing file is an error).
      sequences: names like ``"0002"``, or a split name ``"val"`` / ``"train"`` / ``"fulltrain"`` (the
        mots_tools seqmaps); default: the seqmap's, else every GT file.
      seqmap: optional ``name empty 000000 last_frame`` file fixing the evaluated frames.
    Returns:
      ``{"benchmark": "kitti_mots", "classes": {cls: {"mots_tools": {sMOTSA, MOTSA, MOTSP, MODSA, MODSP,
      MOTSAL, recall, precision, F1, FAR, MT, PT, ML, tp, fp, fn, id_switches, fragments, n_gt, ...},
      "trackeval": {HOTA, DetA, AssA, DetRe, DetPr, AssRe, AssPr, LocA, IDF1, IDR, IDP, MOTA, sMOTA, ...}}},
      "per_sequence": {seq: {cls: mots_tools metrics}}, "sequences", "num_frames", "timings" (seconds per
      stage), "seconds"}``. Ratios in [0, 1]; the HOTA
      family is the mean over the 19 alpha thresholds.
    """
    start = time.perf_counter()
    lengths = sequence_lengths(gt_root, sequences, seqmap)
    gt_dir = _gt_dir(gt_root)
    metrics = _trackeval_metrics()
    per_seq_counts = {cls: {} for cls in CLASSES}
    te_res = {cls: {name: {} for name in metrics} for cls in CLASSES}
    timings = defaultdict(float)
    for seq, last in lengths.items():
        t0 = time.perf_counter()
        sizes = {}
        gt = load_txt(os.path.join(gt_dir, f"{seq}.txt"), (KITTI_CAR, KITTI_PEDESTRIAN, KITTI_IGNORE), size=sizes)
        res_path = _result_file(results_dir, seq)
        res = load_txt(res_path, (KITTI_CAR, KITTI_PEDESTRIAN), max_frame=last, size=sizes)
        timings["load_and_validate"] += time.perf_counter() - t0
        for cls, class_id in CLASSES.items():
            t0 = time.perf_counter()
            frames = list(_sequence_frames(gt, res, last, class_id))
            t1 = time.perf_counter()
            per_seq_counts[cls][seq] = mots_tools_sequence(frames)
            t2 = time.perf_counter()
            data = trackeval_sequence_data(frames)
            for name, metric in metrics.items():
                te_res[cls][name][seq] = metric.eval_sequence(data)
            timings["mask_iou"] += t1 - t0
            timings["mots_tools_counts"] += t2 - t1
            timings["trackeval_hota_clear_identity"] += time.perf_counter() - t2
    out = {"benchmark": "kitti_mots", "classes": {}, "per_sequence": defaultdict(dict), "sequences": list(lengths)}
    for cls in CLASSES:
        total = defaultdict(float)
        for seq, counts in per_seq_counts[cls].items():
            out["per_sequence"][seq][cls] = mots_tools_metrics(counts)
            for k, v in counts.items():
                total[k] += v
        te = {}
        for name, metric in metrics.items():
            combined = metric.combine_sequences(te_res[cls][name])
            for field in metric.summary_fields if hasattr(metric, "summary_fields") else metric.fields:
                te[field] = float(np.mean(combined[field]))
            for field in getattr(metric, "integer_fields", []):
                te[field] = int(combined[field])
        out["classes"][cls] = {"mots_tools": mots_tools_metrics(total), "trackeval": te}
    out["per_sequence"] = dict(out["per_sequence"])
    out["num_frames"] = sum(last + 1 for last in lengths.values())
    out["timings"] = dict(timings)
    out["seconds"] = time.perf_counter() - start
    return out


def _result_file(results_dir: str, seq: str) -> str:
    path = os.path.join(results_dir, f"{seq}.txt")
    if not os.path.isfile(path) and seq.isdigit():
        alt = os.path.join(results_dir, f"{int(seq):04d}.txt")
        path = alt if os.path.isfile(alt) else path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing result file for sequence {seq}: {path}")
    return path


def format_table(result: dict) -> str:
    """mots_tools' summary row per class (x100, one decimal; counts as integers) plus TrackEval's HOTA line."""
    cols = [("sMOTSA", "sMOTSA"), ("MOTSA", "MOTSA"), ("MOTSP", "MOTSP"), ("MODSA", "MODSA"), ("MODSP", "MODSP"),
            ("Recall", "recall"), ("Prec", "precision"), ("MT", "MT"), ("PT", "PT"), ("ML", "ML"),
            ("TP", "tp"), ("FP", "fp"), ("FN", "fn"), ("IDS", "id_switches"), ("Frag", "fragments"),
            ("GT Obj", "n_gt"), ("TR Obj", "n_tr"), ("Ig TR", "n_itr")]
    te_cols = ["HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "IDF1"]
    lines = [f"{'class':<11}" + "".join(f"{n:>8}" for n, _ in cols)]
    for cls, r in result["classes"].items():
        m = r["mots_tools"]
        vals = [f"{m[k]:>8d}" if isinstance(m[k], int) else f"{m[k] * 100:>8.1f}" for _, k in cols]
        lines.append(f"{cls:<11}" + "".join(vals))
    lines += ["", f"{'class':<11}" + "".join(f"{n:>8}" for n in te_cols)]
    for cls, r in result["classes"].items():
        lines.append(f"{cls:<11}" + "".join(f"{r['trackeval'][n] * 100:>8.2f}" for n in te_cols))
    return "\n".join(lines)
