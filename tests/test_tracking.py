"""Proposal files, optical flow, mask IoU / assignment and the proposal trackers (stemseg_jax.tracking)."""

import itertools
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from stemseg_jax import io
from stemseg_jax.tracking import (
    FLOWS,
    FrameProposals,
    OFTracker,
    RITracker,
    TrackClassVotes,
    UnOVOSTParams,
    get_flow,
    linear_assign,
    load_proposals,
    mask_iou,
    paint_tracks,
    proposals_path,
    save_proposals,
    unovost_track,
    warp_masks,
)

# ---------------------------------------------------------------------------------------------- helpers


def _texture(rng, h, w, sigma=2.0):
    """Smooth random BGR texture ``[h, w, 3] uint8`` (trackable by DIS / Farnebäck)."""
    t = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), sigma)
    return ((t - t.min()) / (t.max() - t.min()) * 255).astype(np.uint8)


def _random_proposals(rng, n, h, w):
    masks = rng.random((n, h, w)) < 0.3
    return FrameProposals(masks, rng.random(n).astype(np.float32), rng.integers(1, 5, n).astype(np.int32))


class Scene:
    """A synthetic video: a static textured background, textured rectangles moving at constant velocity
    (listed back to front), an optional static occluder in front of everything. Gives the frames, the
    visible mask of each object per frame, and the exact flow (the velocity of the front-most surface)."""

    def __init__(self, h, w, objects, occluder=None, seed=0):
        rng = np.random.default_rng(seed)
        self.h, self.w = h, w
        self.objects = objects  # name -> dict(rows=(y0, y1), x0, vx, width, frames=range)
        self.background = _texture(rng, h, w)
        self.textures = {k: _texture(rng, o["rows"][1] - o["rows"][0], o["width"]) for k, o in objects.items()}
        self.occluder = occluder  # (y0, y1, x0, x1) or None
        self.occluder_tex = _texture(rng, h, w)

    def _footprint(self, name, t):
        o = self.objects[name]
        m = np.zeros((self.h, self.w), bool)
        if t not in o["frames"]:
            return m
        x0 = o["x0"] + o["vx"] * t
        xs = np.arange(self.w)
        m[o["rows"][0]:o["rows"][1], (xs >= x0) & (xs < x0 + o["width"])] = True
        return m

    def _occ(self):
        m = np.zeros((self.h, self.w), bool)
        if self.occluder:
            y0, y1, x0, x1 = self.occluder
            m[y0:y1, x0:x1] = True
        return m

    def visible(self, t):
        """name -> visible ``[H, W] bool`` (empty when absent or hidden)."""
        names = list(self.objects)
        out = {}
        for i, k in enumerate(names):
            m = self._footprint(k, t) & ~self._occ()
            for front in names[i + 1:]:
                m &= ~self._footprint(front, t)
            out[k] = m
        return out

    def frame(self, t):
        img = self.background.copy()
        for k, o in self.objects.items():
            fp = self._footprint(k, t)
            if fp.any():
                x0 = o["x0"] + o["vx"] * t
                ys, xs = np.nonzero(fp)
                img[ys, xs] = self.textures[k][ys - o["rows"][0], xs - x0]
        occ = self._occ()
        img[occ] = self.occluder_tex[occ]
        return img

    def flow(self, t):
        """Exact flow t -> t+1 ``[H, W, 2]``: a visible object's pixel moves with it; all else is static."""
        f = np.zeros((self.h, self.w, 2), np.float32)
        for k, m in self.visible(t).items():
            f[m, 0] = self.objects[k]["vx"]
        return f

    def oracle_flow_fn(self):
        index = {self.frame(t).tobytes(): t for t in range(self.num_frames)}
        return lambda prev, nxt: self.flow(index[prev.tobytes()])

    @property
    def num_frames(self):
        return max(max(o["frames"]) for o in self.objects.values()) + 1

    def proposals(self, t, rng, min_area=1):
        """Visible objects as proposals in a random order: (props, names)."""
        vis = {k: m for k, m in self.visible(t).items() if m.sum() >= min_area}
        names = list(vis)
        rng.shuffle(names)
        masks = np.stack([vis[k] for k in names]) if names else np.zeros((0, self.h, self.w), bool)
        return FrameProposals(masks, np.full(len(names), 0.9, np.float32), np.ones(len(names), np.int32)), names


def _check_identities(per_frame):
    """``per_frame``: list of {name: id}. Each object keeps one id, and different objects never share one."""
    ids = {}
    for frame in per_frame:
        for name, i in frame.items():
            assert i >= 0
            ids.setdefault(name, set()).add(int(i))
    for name, s in ids.items():
        assert len(s) == 1, f"{name} got ids {s}"
    flat = [next(iter(s)) for s in ids.values()]
    assert len(set(flat)) == len(flat), ids
    return {k: next(iter(s)) for k, s in ids.items()}


# ---------------------------------------------------------------------------------------------- proposals


def test_proposals_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 13, 17
    props = [_random_proposals(rng, 3, h, w), FrameProposals.empty(h, w), _random_proposals(rng, 2, h, w)]
    path = proposals_path(str(tmp_path), "vid")
    save_proposals(path, "vid", ["a.jpg", "b.jpg", "c.jpg"], props)
    video, frames, loaded = load_proposals(path, expected_hw=(h, w), expected_frames=3)
    assert video == "vid" and frames == ["a.jpg", "b.jpg", "c.jpg"] and len(loaded) == 3
    for p, q in zip(props, loaded):
        np.testing.assert_array_equal(p.masks, q.masks)
        np.testing.assert_array_equal(p.scores, q.scores)
        np.testing.assert_array_equal(p.categories, q.categories)
        assert q.scores.dtype == np.float32 and q.categories.dtype == np.int32 and q.masks.dtype == bool
    # bbox as COCO's (pycocotools toBbox of the RLE), xyxy here.
    data = io.read_json(path)
    for r in data["results"]:
        coco = mask_utils.toBbox(io.to_coco_rle(r["segmentation"]))
        np.testing.assert_allclose(r["bbox"], coco)
    np.testing.assert_allclose(loaded[0].boxes[:, 2:] - loaded[0].boxes[:, :2],
                               [r["bbox"][2:] for r in data["results"] if r["image_id"] == 0])


def test_proposals_plain_coco_list(tmp_path):
    rng = np.random.default_rng(1)
    h, w = 9, 11
    masks = rng.random((3, h, w)) < 0.4
    rles = io.encode_rles(masks)
    results = [{"image_id": t, "category_id": c, "score": s, "segmentation": r, "bbox": [0, 0, 1, 1]}
               for t, c, s, r in [(1, 2, 0.5, rles[0]), (0, 1, 0.25, rles[1]), (1, 3, 0.75, rles[2])]]
    path = str(tmp_path / "coco_instances_results.json")
    with open(path, "w") as f:
        json.dump(results, f)
    video, frames, loaded = load_proposals(path, expected_hw=(h, w), expected_frames=["x", "y"])
    assert video == "coco_instances_results" and frames == ["x", "y"]
    np.testing.assert_array_equal(loaded[0].masks, masks[[1]])
    np.testing.assert_array_equal(loaded[1].masks, masks[[0, 2]])  # the file's order within a frame
    np.testing.assert_array_equal(loaded[1].scores, [0.5, 0.75])
    np.testing.assert_array_equal(loaded[1].categories, [2, 3])
    with pytest.raises(ValueError, match="plain COCO results list"):
        load_proposals(path)
    with pytest.raises(ValueError, match="image_id"):
        load_proposals(path, expected_hw=(h, w), expected_frames=1)


def _valid_file(h=6, w=7):
    rng = np.random.default_rng(2)
    rles = io.encode_rles(rng.random((2, h, w)) < 0.5)
    return {"video": "v", "height": h, "width": w, "frames": ["0.jpg", "1.jpg"],
            "results": [{"image_id": 0, "category_id": 1, "score": 0.5, "segmentation": rles[0], "bbox": [0, 0, 1, 1]},
                        {"image_id": 1, "category_id": 2, "score": 0.9, "segmentation": rles[1]}]}


def _set(path_keys, value):
    def edit(d):
        target = d
        for k in path_keys[:-1]:
            target = target[k]
        if value is KeyError:
            del target[path_keys[-1]]
        else:
            target[path_keys[-1]] = value
    return edit


BAD_FILES = {
    "missing score": (_set(["results", 1, "score"], KeyError), ["result 1", "score"]),
    "bool score": (_set(["results", 1, "score"], True), ["result 1", "image_id 1", "'score'"]),
    "nan score": (_set(["results", 0, "score"], float("nan")), ["result 0", "'score'"]),
    "score > 1": (_set(["results", 0, "score"], 1.5), ["result 0", "'score'"]),
    "image_id out of range": (_set(["results", 1, "image_id"], 2), ["result 1", "'image_id'"]),
    "bool image_id": (_set(["results", 1, "image_id"], True), ["result 1", "'image_id'"]),
    "category 0": (_set(["results", 0, "category_id"], 0), ["result 0", "'category_id'"]),
    "string category": (_set(["results", 0, "category_id"], "1"), ["result 0", "'category_id'"]),
    "rle size": (_set(["results", 1, "segmentation", "size"], [7, 7]), ["result 1", "'segmentation'", "size"]),
    "corrupt counts": (_set(["results", 1, "segmentation", "counts"], "~~~~"), ["result 1", "'segmentation'"]),
    "short counts": (_set(["results", 1, "segmentation", "counts"], "02"), ["result 1", "'segmentation'", "covers"]),
    "polygon segmentation": (_set(["results", 0, "segmentation"], [[0, 0, 1, 0, 1, 1]]), ["'segmentation'"]),
    "bad bbox": (_set(["results", 0, "bbox"], [0, 0, 1]), ["result 0", "'bbox'"]),
    "result not an object": (_set(["results", 1], [1, 2]), ["result 1"]),
    "missing height": (_set(["height"], KeyError), ["height"]),
    "bool width": (_set(["width"], True), ["'width'"]),
    "frames not names": (_set(["frames"], [0, 1]), ["'frames'"]),
    "results not a list": (_set(["results"], {}), ["'results'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_proposal_files_are_errors(tmp_path, case):
    edit, fields = BAD_FILES[case]
    data = _valid_file()
    edit(data)
    path = str(tmp_path / "bad.json")
    with open(path, "w") as f:
        json.dump(data, f)  # allow_nan: writes NaN, which Python's reader accepts
    with pytest.raises(ValueError) as e:
        load_proposals(path)
    msg = str(e.value)
    assert path in msg, msg
    for field in fields:
        assert field in msg, (field, msg)


def test_bad_proposal_bytes_and_header(tmp_path):
    path = str(tmp_path / "bad.json")
    for raw, field in [(b'{"video": "\xff"}', "UTF-8"), (b'{"video": ', "not valid JSON"), (b"3", "top level")]:
        with open(path, "wb") as f:
            f.write(raw)
        with pytest.raises(ValueError) as e:
            load_proposals(path)
        assert path in str(e.value) and field in str(e.value), str(e.value)
    io.write_json(path, _valid_file())
    with pytest.raises(ValueError, match="'height', 'width'"):
        load_proposals(path, expected_hw=(6, 8))
    with pytest.raises(ValueError, match="'frames'"):
        load_proposals(path, expected_frames=3)
    with pytest.raises(FileNotFoundError):
        load_proposals(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="path separator"):
        proposals_path(str(tmp_path), "a/b")


def test_frame_proposals_validation():
    m = np.zeros((2, 4, 4), bool)
    with pytest.raises(ValueError, match="scores"):
        FrameProposals(m, [0.5], [1, 1])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        FrameProposals(m, [0.5, 1.5], [1, 1])
    with pytest.raises(ValueError, match=">= 1"):
        FrameProposals(m, [0.5, 0.5], [0, 1])


# ---------------------------------------------------------------------------------------------- flow


def _shifted_pair(dx, dy, h=64, w=80, pad=10, seed=3):
    big = _texture(np.random.default_rng(seed), h + 2 * pad, w + 2 * pad)
    prev = big[pad:pad + h, pad:pad + w]
    nxt = big[pad - dy:pad - dy + h, pad - dx:pad - dx + w]  # nxt[y, x] = prev[y - dy, x - dx]
    return np.ascontiguousarray(prev), np.ascontiguousarray(nxt)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_flow_recovers_a_translation(name):
    dx, dy = 3, -2
    prev, nxt = _shifted_pair(dx, dy)
    flow = get_flow(name)(prev, nxt)
    assert flow.shape == (64, 80, 2) and flow.dtype == np.float32
    interior = flow[10:-10, 10:-10]
    assert np.abs(interior[..., 0] - dx).max() < 0.5
    assert np.abs(interior[..., 1] - dy).max() < 0.5


def test_get_flow_unknown_name_lists_the_flows():
    with pytest.raises(ValueError, match="dis.*farneback"):
        get_flow("pwc")


def test_warp_masks_translated_square():
    dx, dy = 3, -2
    prev, nxt = _shifted_pair(dx, dy)
    square = np.zeros((1, 64, 80), bool)
    square[0, 20:40, 30:50] = True
    moved = np.roll(square, (dy, dx), axis=(1, 2))
    exact = np.zeros((64, 80, 2), np.float32)
    exact[..., 0], exact[..., 1] = dx, dy
    np.testing.assert_array_equal(warp_masks(moved, exact), square)
    for name in FLOWS:
        warped = warp_masks(moved, get_flow(name)(prev, nxt))
        assert mask_iou(warped, square)[0, 0] > 0.9, name


def test_warp_masks_matches_a_gather_reference():
    """Integer flow fields: bilinear sampling is an exact gather, out of the frame is background."""
    rng = np.random.default_rng(4)
    n, h, w = 6, 11, 13  # 6 masks: two remap groups (4 + 2 channels)
    masks = rng.random((n, h, w)) < 0.5
    flow = rng.integers(-3, 4, (h, w, 2)).astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w]
    sx, sy = xs + flow[..., 0].astype(int), ys + flow[..., 1].astype(int)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    ref = np.zeros_like(masks)
    ref[:, inside] = masks[:, sy[inside], sx[inside]]
    np.testing.assert_array_equal(warp_masks(masks, flow), ref)
    # Half-pixel flow: bilinear value 0.5 between two pixels is kept (>= 0.5).
    one = np.zeros((1, 1, 4), bool)
    one[0, 0, 1] = True
    half = np.zeros((1, 4, 2), np.float32)
    half[..., 0] = 0.5
    np.testing.assert_array_equal(warp_masks(one, half)[0, 0], [True, True, False, False])


# ---------------------------------------------------------------------------------------------- assignment


def test_mask_iou_matches_float64_reference():
    rng = np.random.default_rng(5)
    for n, m, h, w in [(5, 7, 13, 17), (3, 2, 8, 8), (1, 4, 31, 3)]:
        a = rng.random((n, h, w)) < rng.random((n, 1, 1))
        b = rng.random((m, h, w)) < rng.random((m, 1, 1))
        a[0] = False
        b[0] = False
        fa, fb = a.reshape(n, -1).astype(np.float64), b.reshape(m, -1).astype(np.float64)
        inter = fa @ fb.T
        union = fa.sum(1)[:, None] + fb.sum(1)[None] - inter
        ref = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        np.testing.assert_allclose(mask_iou(a, b), ref, rtol=0, atol=1e-12)
    assert mask_iou(np.zeros((0, 4, 4), bool), np.zeros((3, 4, 4), bool)).shape == (0, 3)
    pixel = np.zeros((1, 3, 3), bool)
    pixel[0, 1, 1] = True
    assert mask_iou(pixel, pixel)[0, 0] == 1.0


def _brute_force(cost, max_cost):
    """Max number of allowed pairs, then min total cost, over all matchings."""
    n, m = cost.shape
    allowed = np.isfinite(cost) & (cost <= max_cost)
    best = (0, 0.0)
    for k in range(1, min(n, m) + 1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                if all(allowed[r, c] for r, c in zip(rows, cols)):
                    total = sum(cost[r, c] for r, c in zip(rows, cols))
                    if (k, -total) > (best[0], -best[1]):
                        best = (k, total)
    return best


def test_linear_assign_thresholds_and_optimality():
    cost = np.array([[0.1, 0.9, 0.5], [0.2, 0.3, np.inf], [np.nan, 0.05, 0.8]])
    assert linear_assign(cost, 0.6) == [(0, 2), (1, 0), (2, 1)]
    assert linear_assign(cost, 0.25) == [(0, 0), (2, 1)]
    assert linear_assign(cost, 0.01) == []
    assert linear_assign(np.zeros((0, 3)), 1.0) == []
    rng = np.random.default_rng(6)
    for _ in range(40):
        n, m = rng.integers(1, 5, 2)
        c = rng.normal(size=(n, m))
        c[rng.random((n, m)) < 0.2] = np.inf
        pairs = linear_assign(c, 0.5)
        assert len({i for i, _ in pairs}) == len(pairs) == len({j for _, j in pairs})
        assert all(c[i, j] <= 0.5 for i, j in pairs)
        k, total = _brute_force(c, 0.5)
        assert len(pairs) == k
        np.testing.assert_allclose(sum(c[i, j] for i, j in pairs), total, atol=1e-9)


# ---------------------------------------------------------------------------------------------- OF-Tracker


def _of_scene():
    """A: 20 px wide, passes behind a 14 px occluder (visible down to 30%); B and C cross (C in front, B
    half hidden); D enters from the right edge at frame 8."""
    t = range(0, 24)
    return Scene(64, 128, {
        "A": dict(rows=(12, 32), x0=20, vx=2, width=20, frames=t),
        "B": dict(rows=(36, 52), x0=4, vx=3, width=16, frames=t),
        "C": dict(rows=(44, 60), x0=110, vx=-3, width=16, frames=t),
        "D": dict(rows=(0, 10), x0=142, vx=-2, width=12, frames=range(8, 24)),
    }, occluder=(8, 34, 50, 64))


@pytest.mark.parametrize("flow", ["oracle", "dis"])
def test_of_tracker_occlusion_crossing_and_entering(flow):
    scene = _of_scene()
    vis_area = [scene.visible(t)["A"].sum() for t in range(scene.num_frames)]
    assert 10 * min(vis_area) == 3 * max(vis_area)  # the scene does what the test claims
    flow_fn = scene.oracle_flow_fn() if flow == "oracle" else FLOWS["dis"]
    tracker = OFTracker(flow_fn)
    rng = np.random.default_rng(7)
    per_frame = []
    for t in range(scene.num_frames):
        props, names = scene.proposals(t, rng)
        ids = tracker.update(scene.frame(t), props)
        assert ids.dtype == np.int32 and ids.shape == (len(props),)
        per_frame.append(dict(zip(names, ids.tolist())))
    ids = _check_identities(per_frame)
    assert ids["D"] == 3 == tracker.num_tracks - 1  # the entering object gets the next fresh id


def test_of_tracker_links_through_the_flow():
    """Objects faster than their width never overlap from frame to frame: only the flow links them."""
    scene = Scene(48, 128, {"F": dict(rows=(10, 30), x0=2, vx=9, width=8, frames=range(10)),
                            "G": dict(rows=(32, 46), x0=110, vx=-9, width=8, frames=range(10))})
    zero = lambda prev, nxt: np.zeros((*prev.shape[:2], 2), np.float32)
    for flow_fn, expect_kept in [(scene.oracle_flow_fn(), True), (zero, False)]:
        tracker = OFTracker(flow_fn)
        rng = np.random.default_rng(12)
        per_frame = []
        for t in range(scene.num_frames):
            props, names = scene.proposals(t, rng)
            per_frame.append(dict(zip(names, tracker.update(scene.frame(t), props).tolist())))
        if expect_kept:
            assert _check_identities(per_frame) and tracker.num_tracks == 2
        else:
            assert tracker.num_tracks == 2 * scene.num_frames


def test_of_tracker_new_ids_after_a_track_ends_and_min_score():
    scene = Scene(32, 48, {
        "A": dict(rows=(4, 14), x0=4, vx=1, width=10, frames=range(0, 4)),
        "E": dict(rows=(4, 14), x0=8, vx=1, width=10, frames=range(5, 8)),  # same place, after A is gone
    })
    tracker = OFTracker(scene.oracle_flow_fn(), min_score=0.5)
    rng = np.random.default_rng(8)
    seen = []
    for t in range(scene.num_frames):
        props, names = scene.proposals(t, rng)
        if names:  # a low-scoring copy of the object is not tracked
            props = FrameProposals(np.concatenate([props.masks, props.masks]), np.r_[props.scores, [0.2]],
                                   np.r_[props.categories, [1]])
        ids = tracker.update(scene.frame(t), props)
        if names:
            assert ids[1] == -1
            seen.append((names[0], int(ids[0])))
        else:
            assert ids.shape == (0,)
    assert {n for n, _ in seen} == {"A", "E"}
    assert len({i for n, i in seen if n == "A"}) == 1 and len({i for n, i in seen if n == "E"}) == 1
    assert {i for n, i in seen if n == "A"} != {i for n, i in seen if n == "E"}  # never reused


def test_of_tracker_never_links_masks_that_do_not_overlap():
    a, b = np.zeros((1, 6, 6), bool), np.zeros((1, 6, 6), bool)
    a[0, :2, :2] = True
    b[0, 4:, 4:] = True
    zero = lambda prev, nxt: np.zeros((*prev.shape[:2], 2), np.float32)
    tracker = OFTracker(zero, iou_threshold=0.0)
    frame = np.zeros((6, 6, 3), np.uint8)
    assert tracker.update(frame, FrameProposals(a, [0.9], [1])).tolist() == [0]
    assert tracker.update(frame, FrameProposals(b, [0.9], [1])).tolist() == [1]


def test_of_tracker_rejects_a_frame_of_another_size():
    tracker = OFTracker(FLOWS["dis"])
    with pytest.raises(ValueError, match="does not match"):
        tracker.update(np.zeros((8, 8, 3), np.uint8), FrameProposals.empty(8, 9))


# ---------------------------------------------------------------------------------------------- RI-Tracker


def _unit(rng, n, d):
    v = rng.normal(size=(n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_ri_tracker_bridges_a_full_occlusion_and_hands_out_new_ids():
    rng = np.random.default_rng(9)
    names = ["A", "B", "C", "D", "E"]
    base = dict(zip(names, _unit(rng, 5, 16)))
    present = {"A": set(range(12)) - {5, 6}, "B": set(range(12)), "C": set(range(12)),  # A hidden at 5, 6
               "D": set(range(4, 12)), "E": set(range(9, 12))}  # D, E enter mid-video
    tracker = RITracker()
    per_frame = []
    for t in range(12):
        here = [k for k in names if t in present[k]]
        rng.shuffle(here)  # B and C swap places in the proposal lists: "crossing"
        emb = np.stack([base[k] + rng.normal(scale=0.02, size=16) for k in here])
        props = _random_proposals(rng, len(here), 4, 4)
        ids = tracker.update(props, emb)
        per_frame.append(dict(zip(here, ids.tolist())))
    ids = _check_identities(per_frame)
    assert ids["D"] == 3 and ids["E"] == 4


def test_ri_tracker_gap_limit_min_score_and_errors():
    rng = np.random.default_rng(10)
    e = _unit(rng, 1, 8)
    props = FrameProposals(np.ones((1, 2, 2), bool), [0.9], [1])
    empty = FrameProposals.empty(2, 2)
    tracker = RITracker(max_gap=1)
    first = tracker.update(props, e)[0]
    tracker.update(empty, np.zeros((0, 8)))
    assert tracker.update(props, e)[0] == first  # 1 frame unseen: bridged
    tracker.update(empty, np.zeros((0, 8)))
    tracker.update(empty, np.zeros((0, 8)))
    assert tracker.update(props, e)[0] == first + 1  # 2 frames unseen > max_gap: a new track
    low = FrameProposals(np.ones((1, 2, 2), bool), [0.1], [1])
    assert RITracker(min_score=0.5).update(low, e)[0] == -1
    # The proposal near the track takes it; the other one, too far (0.85 > 0.5), starts a new track.
    tracker = RITracker(max_distance=0.5)
    two = FrameProposals(np.ones((2, 2, 2), bool), [0.9, 0.9], [1, 1])
    a = tracker.update(props, e)
    got = tracker.update(two, np.concatenate([e + 0.3, e + 0.01]))
    assert got.tolist() == [a[0] + 1, a[0]]
    with pytest.raises(ValueError, match="embeddings must be"):
        tracker.update(two, e)
    with pytest.raises(ValueError, match="dimension"):
        tracker.update(props, np.zeros((1, 4)))


# ---------------------------------------------------------------------------------------------- UnOVOST


def test_unovost_merges_tracklets_across_a_gap_but_not_a_distractor():
    """A is absent in frames 6-8 (two tracklets, same embedding); Z lives exactly in A's gap with another
    embedding (time-disjoint from both, so a merge candidate); a duplicate of A and a low-score proposal
    are pruned; with max_tracks=2 a weak short object W is dropped."""
    t = range(0, 16)
    scene = Scene(48, 96, {
        "A": dict(rows=(4, 20), x0=4, vx=2, width=16, frames=set(t) - {6, 7, 8}),
        "Z": dict(rows=(26, 42), x0=60, vx=-2, width=14, frames=range(6, 9)),
        "W": dict(rows=(26, 42), x0=4, vx=1, width=10, frames=range(12, 14)),
    })
    rng = np.random.default_rng(11)
    base = dict(zip("AZW", _unit(rng, 3, 8)))
    proposals, embeddings, names_per_frame = [], [], []
    for f in range(scene.num_frames):
        props, names = scene.proposals(f, rng)
        scores = np.where(np.array(names) == "W", 0.3, 0.9).astype(np.float32)
        masks, cats, emb = list(props.masks), list(props.categories), [base[k] + rng.normal(scale=0.01, size=8)
                                                                        for k in names]
        if "A" in names:  # a near-duplicate of A (NMS) and a low-scoring blob (score threshold)
            a = props.masks[names.index("A")]
            masks += [np.roll(a, 1, axis=1), np.roll(a, 20, axis=0)]
            scores = np.r_[scores, [0.8, 0.05]].astype(np.float32)
            cats += [1, 1]
            emb += [base["A"], base["A"]]
            names = names + ["dup", "low"]
        proposals.append(FrameProposals(np.stack(masks), scores, np.asarray(cats)))
        embeddings.append(np.stack(emb))
        names_per_frame.append(names)
    out = unovost_track(scene.frame, proposals, embeddings, scene.oracle_flow_fn(), UnOVOSTParams(max_tracks=2))
    per_frame = []
    for names, ids in zip(names_per_frame, out):
        assert ids.dtype == np.int32 and ids.shape == (len(names),)
        d = dict(zip(names, ids.tolist()))
        for k in ("dup", "low", "W"):
            assert d.pop(k, -1) == -1, k
        per_frame.append(d)
    ids = _check_identities(per_frame)
    assert ids == {"A": 0, "Z": 1}  # A merged over its gap, Z kept apart; ids by first frame
    # Without long-term merging room (merge_distance 0) A splits into its two tracklets.
    out = unovost_track(scene.frame, proposals, embeddings, scene.oracle_flow_fn(),
                        UnOVOSTParams(merge_distance=0.0, max_tracks=5))
    a_ids = {int(ids[names.index("A")]) for names, ids in zip(names_per_frame, out) if "A" in names}
    assert len(a_ids) == 2


def test_unovost_never_merges_tracklets_that_share_a_frame():
    """Twins with one embedding, side by side in frames 0-4, then only the first continues after a gap:
    the twins stay two tracks, the continuation joins one of them (the closer mean embedding)."""
    scene = Scene(32, 96, {
        "A": dict(rows=(2, 14), x0=4, vx=1, width=12, frames=set(range(10)) - {5, 6}),
        "B": dict(rows=(18, 30), x0=60, vx=-1, width=12, frames=range(5)),
    })
    rng = np.random.default_rng(13)
    e = _unit(rng, 1, 8)[0]
    proposals, embeddings, names_per_frame = [], [], []
    for f in range(scene.num_frames):
        props, names = scene.proposals(f, rng)
        proposals.append(props)
        embeddings.append(np.asarray([e + (0.001 if k == "A" else 0.0) for k in names]).reshape(len(names), 8))
        names_per_frame.append(names)
    out = unovost_track(scene.frame, proposals, embeddings, scene.oracle_flow_fn(), UnOVOSTParams())
    ids = [dict(zip(n, i.tolist())) for n, i in zip(names_per_frame, out)]
    assert ids[0]["A"] != ids[0]["B"]
    assert ids[9]["A"] == ids[0]["A"]


def test_unovost_input_errors():
    props = [FrameProposals(np.ones((1, 4, 4), bool), [0.9], [1])]
    frames = lambda t: np.zeros((4, 4, 3), np.uint8)
    # Parameters as a mapping (a config section); unknown keys and bad values are errors.
    assert [i.tolist() for i in unovost_track(frames, props, [np.ones((1, 3))], FLOWS["dis"], {"min_score": 0.95})] \
        == [[-1]]
    with pytest.raises(ValueError, match="unknown UnOVOST parameter.*tracklet_iou"):
        unovost_track(frames, props, [np.ones((1, 3))], FLOWS["dis"], {"flow_iou": 0.5})
    with pytest.raises(ValueError, match="max_tracks"):
        UnOVOSTParams(max_tracks=0)
    with pytest.raises(ValueError, match="embeddings must be"):
        unovost_track(lambda t: np.zeros((4, 4, 3), np.uint8), props, [np.zeros((2, 3))], FLOWS["dis"])
    with pytest.raises(ValueError, match="embeddings for 0 frames"):
        unovost_track(lambda t: np.zeros((4, 4, 3), np.uint8), props, [], FLOWS["dis"])


# ---------------------------------------------------------------------------------------------- painting


def test_paint_tracks_higher_score_wins():
    m = np.zeros((4, 3, 4), bool)
    m[0, :, :3] = True  # score 0.5
    m[1, :, 1:] = True  # score 0.9: wins its overlap with 0
    m[2, 0, :] = True  # score 0.9: loses the tie with 1 (higher index), wins the tie with 3
    m[3, 0, :2] = True  # score 0.9, id -1: never painted
    props = FrameProposals(m, [0.5, 0.9, 0.9, 0.9], [1, 1, 1, 1])
    label = paint_tracks(props, np.array([7, 8, 9, -1]))
    np.testing.assert_array_equal(label, [[9, 8, 8, 8], [7, 8, 8, 8], [7, 8, 8, 8]])
    assert label.dtype == np.int32
    assert (paint_tracks(FrameProposals.empty(2, 3), np.zeros(0)) == -1).all()


def test_track_class_votes_mean_score_per_category():
    votes = TrackClassVotes(num_classes=4)
    m = np.ones((3, 2, 2), bool)
    votes.add(FrameProposals(m, [0.2, 0.6, 0.9], [1, 3, 1]), np.array([0, 1, -1]))
    votes.add(FrameProposals(m[:2], [0.4, 0.8], [1, 2]), np.array([0, 1]))
    out = votes.result()
    assert sorted(out) == [0, 1]
    np.testing.assert_allclose(out[0], [0, np.mean([0.2, 0.4]), 0, 0], atol=1e-7)
    np.testing.assert_allclose(out[1], [0, 0, 0.8, 0.6], atol=1e-7)
    with pytest.raises(ValueError, match="num_classes"):
        votes.add(FrameProposals(m[:1], [0.5], [4]), np.array([0]))

