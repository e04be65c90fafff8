"""Synthetic video instance segmentation datasets written in the real on-disk formats.

Textured objects of a few categories move, scale, rotate, occlude each other, enter and leave over a
textured background seen by a panning camera. Each category has its own shape, colour and texture so
a tiny model can learn it in minutes; the background is low-saturation clutter. Every file is written
in exactly the layout the matching reader (and the benchmark's evaluation) expects:

* ``davis``: ``JPEGImages/480p/<seq>/00000.jpg``, ``Annotations_unsupervised/480p/<seq>/00000.png``
  (indexed PNG), ``ImageSets/2017/{train,val}.txt``.
* ``ytvis``: ``{train,valid}/JPEGImages/<vid>/00000.jpg`` (every 5th frame number, like 2019),
  ``train.json`` (annotations as uncompressed RLE, like the real GT), ``valid.json`` (videos only, as
  released) and ``valid_gt.json``: the ground truth of the valid split in GT format, for scoring it.
* ``kitti_mots``: ``training/image_02/<seq>/000000.png``, ``instances_txt/<seq>.txt`` and
  ``instances/<seq>/000000.png`` (16-bit), with class-10 ignore regions; train sequences are named
  from the spec §7.1 train list and val sequences from the val list, so the KITTI split applies.
* ``coco``: ``{train2017,val2017}/*.jpg`` and ``annotations/instances_{train2017,val2017}.json`` with
  RLE and polygon masks and ``iscrowd`` regions; COCO category ids chosen so that ``coco_to_ytvis``
  maps them onto the ytvis synthetic categories.

Deterministic for a seed: video ``k`` of a split depends only on ``(seed, split, k)`` and the knobs.
"""

from __future__ import annotations

import dataclasses
import math
import os

import cv2
import numpy as np

from stemseg_jax import io
from stemseg_jax.data.readers.kitti_mots import KITTI_TRAIN, KITTI_VAL

FORMATS = ("davis", "ytvis", "kitti_mots", "coco")
DEFAULT_SIZE = {"davis": (120, 214), "ytvis": (128, 224), "kitti_mots": (128, 256), "coco": (128, 224)}
# (train split, val split) names as the readers expect them.
SPLITS = {"davis": ("train", "val"), "ytvis": ("train", "valid"), "kitti_mots": ("train", "val"),
          "coco": ("train2017", "val2017")}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Style:
    """How a category looks: a polygon shape, aspect (w/h), two BGR colours and a texture."""

    name: str
    shape: str  # ellipse | rect | triangle | diamond | hexagon
    aspect: float
    colour: tuple[int, int, int]
    colour2: tuple[int, int, int]
    texture: str  # hstripes | vstripes | checker | dots | rings


_PERSON = Style("person", "ellipse", 0.5, (40, 40, 220), (20, 20, 120), "hstripes")
_CAR = Style("car", "rect", 2.0, (220, 120, 30), (120, 50, 10), "checker")
_DOG = Style("dog", "triangle", 1.2, (40, 200, 40), (10, 100, 10), "dots")
_CAT = Style("cat", "diamond", 1.0, (30, 220, 230), (10, 120, 140), "rings")
_BIKE = Style("bike", "hexagon", 1.3, (200, 40, 200), (100, 10, 100), "vstripes")

# Per format: dataset category id -> style. ytvis ids are YouTube-VIS ids (person, sedan, dog, cat);
# coco ids map onto exactly those through ``coco_to_ytvis``; DAVIS is class-agnostic (all id 1).
CATEGORY_STYLES = {
    "davis": {1: _PERSON, 2: _CAR, 3: _DOG, 4: _CAT, 5: _BIKE},
    "ytvis": {1: _PERSON, 6: _CAR, 8: _DOG, 14: _CAT},
    "kitti_mots": {1: _CAR, 2: _PERSON},
    "coco": {1: _PERSON, 3: _CAR, 18: _DOG, 17: _CAT},
}
CATEGORY_NAMES = {
    "ytvis": {1: "person", 6: "sedan", 8: "dog", 14: "cat"},
    "kitti_mots": {1: "car", 2: "pedestrian"},
    "coco": {1: "person", 3: "car", 18: "dog", 17: "cat"},
}


@dataclasses.dataclass(frozen=True)
class Knobs:
    """Difficulty knobs (fractions are of the frame's short side / width)."""

    min_objects: int = 2
    max_objects: int = 4
    object_size: tuple[float, float] = (0.3, 0.5)  # object height / short side
    max_speed: float = 0.02  # px per frame / frame width
    scale_change: float = 0.15  # amplitude of the size oscillation
    rotation: float = 10.0  # max rotation amplitude in degrees
    enter_prob: float = 0.25  # object enters the frame after the first frame
    leave_prob: float = 0.2  # object moves out instead of bouncing off the border
    camera_speed: float = 1.0  # px per frame of background pan
    noise: float = 3.0  # std of per-pixel Gaussian noise (grey levels)
    ignore_prob: float = 0.5  # kitti_mots: a video gets a class-10 ignore region
    crowd_prob: float = 0.3  # coco: an image gets an iscrowd region
    polygon_prob: float = 0.3  # coco: a mask is stored as polygons instead of RLE


# ------------------------------------------------------------------------------------------ scenes


@dataclasses.dataclass
class _Object:
    category: int
    style: Style
    size: float  # height in px
    pos: np.ndarray  # [2] (x, y) centre in px at frame 0
    vel: np.ndarray  # [2] px / frame
    bounce: bool
    scale_phase: float
    scale_freq: float
    rot_amp: float
    rot_phase: float
    period: float  # texture period in local units
    colour_jitter: np.ndarray  # [3]


def _unit_polygon(shape: str) -> np.ndarray:
    """Shape outline in [-1, 1]^2, ``[P, 2]`` (x, y)."""
    if shape == "ellipse":
        a = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "rect":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    if shape == "triangle":
        return np.array([[0, -1], [1, 1], [-1, 1]], float)
    if shape == "diamond":
        return np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], float)
    if shape == "hexagon":
        a = np.linspace(0, 2 * np.pi, 6, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(style: Style, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Two-tone pattern in object-local coordinates ``u, v`` (so it moves with the object)."""
    if style.texture == "hstripes":
        return np.sin(2 * np.pi * v / period) > 0
    if style.texture == "vstripes":
        return np.sin(2 * np.pi * u / period) > 0
    if style.texture == "checker":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    if style.texture == "dots":
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        return du * du + dv * dv > (0.3 * period) ** 2
    if style.texture == "rings":
        return np.sin(2 * np.pi * np.sqrt(u * u + v * v) / period) > 0
    raise ValueError(f"unknown texture {style.texture!r}")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-saturation cluttered texture ``[h, w, 3] float32``."""
    base = rng.uniform(90, 160, 3)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    for sigma, amp in ((12.0, 25.0), (4.0, 12.0), (1.0, 6.0)):
        layer = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma)
        layer /= layer.std() + 1e-6
        img += amp * layer[..., None] * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    for _ in range(int(h * w / 1500)):  # grey-ish clutter blobs and bars
        grey = float(rng.uniform(60, 190))
        colour = tuple(float(grey + d) for d in rng.uniform(-15, 15, 3))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            r = int(rng.integers(3, max(4, h // 10)))
            cv2.circle(img, (cx, cy), r, colour, -1)
        else:
            dx, dy = int(rng.integers(2, max(3, w // 12))), int(rng.integers(2, max(3, h // 12)))
            cv2.rectangle(img, (cx - dx, cy - dy), (cx + dx, cy + dy), colour, -1)
    return cv2.GaussianBlur(img, (0, 0), 0.8)


class _Scene:
    """One synthetic video: renders frames and per-object visible masks."""

    def __init__(self, rng: np.random.Generator, styles: dict[int, Style], h: int, w: int, n_frames: int,
                 knobs: Knobs, allow_enter: bool = True):  # fmt: skip
        self.h, self.w, self.n = h, w, n_frames
        self.knobs = knobs
        short = min(h, w)
        cam = rng.uniform(-1, 1, 2)
        cam = cam / (np.linalg.norm(cam) + 1e-9) * knobs.camera_speed * rng.uniform(0.3, 1.0)
        margin = int(math.ceil(abs(cam).max() * n_frames)) + 4
        self.bg = _background(rng, h + 2 * margin, w + 2 * margin)
        self.cam, self.margin = cam, margin
        k = int(rng.integers(knobs.min_objects, knobs.max_objects + 1))
        cats = sorted(styles)
        self.objects = []
        for _ in range(k):
            cat = int(rng.choice(cats))
            style = styles[cat]
            size = float(rng.uniform(*knobs.object_size)) * short
            half = np.array([size * style.aspect, size]) / 2
            speed = knobs.max_speed * w * rng.uniform(0.3, 1.0)
            angle = rng.uniform(0, 2 * np.pi)
            vel = speed * np.array([np.cos(angle), np.sin(angle)])
            lo, hi = np.minimum(half, [w / 2, h / 2]), np.maximum([w, h] - half, [w / 2, h / 2])
            pos = rng.uniform(lo, hi)
            bounce = True
            if allow_enter and n_frames > 4 and rng.random() < knobs.enter_prob:
                # Start outside a border and move in; it appears after a few frames.
                t_enter = rng.uniform(0.15, 0.5) * n_frames
                axis = int(rng.integers(0, 2))
                side = rng.choice([-1.0, 1.0])
                dims = np.array([w, h], float)
                speed_in = max(speed, (half[axis] + 2) / t_enter)
                vel[axis] = -side * speed_in
                pos[axis] = (dims[axis] / 2 + side * (dims[axis] / 2 + half[axis])) - vel[axis] * t_enter
            elif n_frames > 4 and rng.random() < knobs.leave_prob:
                # Head for a border fast enough to be gone before the end of the video.
                bounce = False
                t_exit = rng.uniform(0.5, 0.85) * n_frames
                axis = int(rng.integers(0, 2))
                side = rng.choice([-1.0, 1.0])
                dims = np.array([w, h], float)
                dist = (dims[axis] - pos[axis] + half[axis]) if side > 0 else (pos[axis] + half[axis])
                vel[axis] = side * max(abs(vel[axis]), (dist + 2) / t_exit)
            self.objects.append(_Object(
                category=cat, style=style, size=size, pos=pos, vel=vel, bounce=bounce,
                scale_phase=float(rng.uniform(0, 2 * np.pi)), scale_freq=float(rng.uniform(0.05, 0.2)),
                rot_amp=float(rng.uniform(-1, 1) * knobs.rotation), rot_phase=float(rng.uniform(0, 2 * np.pi)),
                period=float(rng.uniform(0.25, 0.4)), colour_jitter=rng.uniform(-20, 20, 3),
            ))  # fmt: skip
        self.order = rng.permutation(k)  # back-to-front drawing order
        self.trajectories = [self._simulate(o) for o in self.objects]
        self.noise_rng = np.random.default_rng(rng.integers(1 << 62))
        self.flicker = rng.uniform(-6, 6, n_frames)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.grid = (xx + 0.5, yy + 0.5)

    def _simulate(self, o: _Object) -> np.ndarray:
        """Centres ``[T, 2]``; bouncing objects reflect off the borders once fully inside."""
        pos, vel = o.pos.astype(float).copy(), o.vel.astype(float).copy()
        half = np.array([o.size * o.style.aspect, o.size]) / 2
        lo, hi = half * 0.6, np.array([self.w, self.h]) - half * 0.6
        inside = np.all((pos >= lo) & (pos <= hi))
        out = []
        for _ in range(self.n):
            out.append(pos.copy())
            pos = pos + vel
            if o.bounce:
                now_inside = np.all((pos >= lo) & (pos <= hi))
                inside = inside or now_inside
                if inside:
                    for a in range(2):
                        if pos[a] < lo[a] or pos[a] > hi[a]:
                            vel[a] = -vel[a]
                            pos[a] = np.clip(pos[a], lo[a], hi[a])
        return np.array(out)

    def _object_geometry(self, o: _Object, centre: np.ndarray, t: int):
        scale = 1.0 + self.knobs.scale_change * math.sin(o.scale_freq * 2 * np.pi * t + o.scale_phase)
        half = np.array([o.size * o.style.aspect, o.size]) / 2 * scale
        theta = math.radians(o.rot_amp * math.sin(0.1 * t + o.rot_phase))
        return half, theta

    def render(self, t: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Frame ``[H, W, 3] uint8`` BGR and the visible mask ``[H, W] bool`` of every object."""
        off = np.round(self.margin + self.cam * t).astype(int)
        img = self.bg[off[1]:off[1] + self.h, off[0]:off[0] + self.w].copy()
        xx, yy = self.grid
        shapes = [None] * len(self.objects)
        for i in self.order:
            o = self.objects[i]
            centre = self.trajectories[i][t]
            half, theta = self._object_geometry(o, centre, t)
            c, s = math.cos(theta), math.sin(theta)
            poly = _unit_polygon(o.style.shape) * half
            poly = poly @ np.array([[c, s], [-s, c]]) + centre
            mask = np.zeros((self.h, self.w), np.uint8)
            cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
            mask = mask.astype(bool)
            shapes[i] = mask
            if not mask.any():
                continue
            dx, dy = xx - centre[0], yy - centre[1]
            u = (c * dx + s * dy) / (2 * half[1])
            v = (-s * dx + c * dy) / (2 * half[1])
            pattern = _texture(o.style, u, v, o.period)
            c1 = np.clip(np.array(o.style.colour) + o.colour_jitter, 0, 255)
            c2 = np.clip(np.array(o.style.colour2) + o.colour_jitter * 0.5, 0, 255)
            colours = np.where(pattern[..., None], c1, c2).astype(np.float32)
            img[mask] = colours[mask]
        visible = []
        covered = np.zeros((self.h, self.w), bool)
        for i in self.order[::-1]:  # front to back
            visible.append((i, shapes[i] & ~covered))
            covered |= shapes[i]
        visible_masks = [m for _, m in sorted(visible, key=lambda p: p[0])]
        img = img + self.flicker[t] + self.noise_rng.normal(0, self.knobs.noise, img.shape).astype(np.float32)
        return np.clip(np.round(img), 0, 255).astype(np.uint8), visible_masks

    def render_all(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Frames and visible masks ``[K, T, H, W] bool``."""
        frames, masks = zip(*(self.render(t) for t in range(self.n)))
        return list(frames), np.stack([np.stack(per_object) for per_object in zip(*masks)])


def _blob_region(rng: np.random.Generator, h: int, w: int, n_blobs: int, radius: float) -> np.ndarray:
    """A cluster of small discs ``[H, W] bool`` (ignore / crowd regions)."""
    m = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    for _ in range(n_blobs):
        x, y = cx + rng.normal(0, radius * 1.5), cy + rng.normal(0, radius * 1.5)
        cv2.circle(m, (int(x), int(y)), max(2, int(radius * rng.uniform(0.6, 1.2))), 1, -1)
    return m.astype(bool)


def _paint_region(frame: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> None:
    """Paints a grey noisy texture (no learnable category) into ``region`` of ``frame`` in place."""
    tex = cv2.GaussianBlur(rng.uniform(70, 200, region.shape).astype(np.float32), (0, 0), 1.0)
    frame[region] = np.clip(tex[region], 0, 255).astype(np.uint8)[:, None]


# ------------------------------------------------------------------------------------------ writers


def _video_rng(seed: int, split_idx: int, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, split_idx, k])


def _first_appearance_order(masks: np.ndarray) -> list[int]:
    """Object indices ordered by first visible frame (then by area there); never-visible ones dropped."""
    present = masks.any(axis=(2, 3))  # [K, T]
    visible = [k for k in range(masks.shape[0]) if present[k].any()]
    first = {k: int(np.argmax(present[k])) for k in visible}
    return sorted(visible, key=lambda k: (first[k], -int(masks[k, first[k]].sum())))


def _write_davis(out: str, split: str, split_idx: int, count: int, seed: int, h: int, w: int, n: int, knobs: Knobs):
    names = []
    for k in range(count):
        rng = _video_rng(seed, split_idx, k)
        scene = _Scene(rng, CATEGORY_STYLES["davis"], h, w, n, knobs, allow_enter=knobs.enter_prob > 0)
        frames, masks = scene.render_all()
        order = _first_appearance_order(masks)
        name = f"{split}{k:03d}"
        names.append(name)
        for t in range(n):
            label = np.zeros((h, w), np.uint8)
            for new_id, obj in enumerate(order, 1):
                label[masks[obj, t]] = new_id
            io.write_image(os.path.join(out, "JPEGImages", "480p", name, f"{t:05d}.jpg"), frames[t])
            io.write_indexed_png(os.path.join(out, "Annotations_unsupervised", "480p", name, f"{t:05d}.png"), label)
    io.write_text(os.path.join(out, "ImageSets", "2017", f"{split}.txt"), "".join(f"{s}\n" for s in names))
    return names


def _ytvis_annotation(ann_id: int, vid: int, cat: int, masks_t: np.ndarray) -> dict:
    segs, areas, boxes = [], [], []
    for m in masks_t:
        if not m.any():
            segs.append(None)
            areas.append(None)
            boxes.append(None)
            continue
        ys, xs = np.nonzero(m)
        segs.append(io.encode_rle_uncompressed(m))
        areas.append(int(m.sum()))
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)])
    return dict(id=ann_id, video_id=vid, category_id=cat, iscrowd=0, segmentations=segs, areas=areas, bboxes=boxes,
                height=int(masks_t.shape[1]), width=int(masks_t.shape[2]))  # fmt: skip


def _write_ytvis(out: str, split: str, split_idx: int, count: int, seed: int, h: int, w: int, n: int, knobs: Knobs):
    categories = [{"id": c, "name": CATEGORY_NAMES["ytvis"][c], "supercategory": "object"}
                  for c in sorted(CATEGORY_NAMES["ytvis"])]  # fmt: skip
    videos, annotations = [], []
    ann_id = 1
    for k in range(count):
        rng = _video_rng(seed, split_idx, k)
        scene = _Scene(rng, CATEGORY_STYLES["ytvis"], h, w, n, knobs)
        frames, masks = scene.render_all()
        vid = k + 1
        folder = f"{split}{k:03d}"
        file_names = [f"{folder}/{5 * t:05d}.jpg" for t in range(n)]  # YouTube-VIS 2019 keeps every 5th frame
        for t in range(n):
            io.write_image(os.path.join(out, split, "JPEGImages", file_names[t]), frames[t])
        videos.append(dict(id=vid, width=w, height=h, length=n, file_names=file_names))
        for obj in _first_appearance_order(masks):
            annotations.append(_ytvis_annotation(ann_id, vid, scene.objects[obj].category, masks[obj]))
            ann_id += 1
    info = {"description": "stemseg-jax synthetic YouTube-VIS-format dataset"}
    if split == "train":
        io.write_json(os.path.join(out, "train.json"),
                      dict(info=info, videos=videos, annotations=annotations, categories=categories))  # fmt: skip
    else:
        io.write_json(os.path.join(out, f"{split}.json"), dict(info=info, videos=videos, categories=categories))
        io.write_json(os.path.join(out, f"{split}_gt.json"),
                      dict(info=info, videos=videos, annotations=annotations, categories=categories))  # fmt: skip
    return [v["id"] for v in videos]


def _write_kitti(out: str, split: str, split_idx: int, count: int, seed: int, h: int, w: int, n: int, knobs: Knobs):
    names_pool = KITTI_TRAIN if split == "train" else KITTI_VAL
    if count > len(names_pool):
        raise ValueError(f"kitti_mots: at most {len(names_pool)} {split} sequences (spec §7.1 split), got {count}")
    names = []
    for k in range(count):
        rng = _video_rng(seed, split_idx, k)
        scene = _Scene(rng, CATEGORY_STYLES["kitti_mots"], h, w, n, knobs)
        frames, masks = scene.render_all()
        ignore = None
        if rng.random() < knobs.ignore_prob:
            ignore = _blob_region(rng, h, w, 5, 0.06 * min(h, w))
        name = names_pool[k]
        names.append(name)
        lines = []
        per_class = {}
        obj_ids = {}
        for obj in _first_appearance_order(masks):
            cls = scene.objects[obj].category
            per_class[cls] = per_class.get(cls, 0) + 1
            obj_ids[obj] = cls * 1000 + 2 * per_class[cls] - 1  # odd numbers: ids that skip, as real KITTI
        for t in range(n):
            label = np.zeros((h, w), np.uint16)
            frame = frames[t]
            if ignore is not None:
                # The ignore region sits in front of the objects (an unlabelled occluder).
                _paint_region(frame, ignore, np.random.default_rng([seed, split_idx, k, t]))
                label[ignore] = 10000
                lines.append(f"{t} 10000 10 {h} {w} {io.encode_rle(ignore)['counts']}")
            for obj, oid in obj_ids.items():
                m = masks[obj, t] & (~ignore if ignore is not None else True)
                if not m.any():
                    continue
                label[m] = oid
                lines.append(f"{t} {oid} {oid // 1000} {h} {w} {io.encode_rle(m)['counts']}")
            io.write_image(os.path.join(out, "training", "image_02", name, f"{t:06d}.png"), frame)
            io.write_uint16_png(os.path.join(out, "instances", name, f"{t:06d}.png"), label)
        io.write_text(os.path.join(out, "instances_txt", f"{name}.txt"), "".join(f"{line}\n" for line in lines))
    return names


def _mask_to_polygons(m: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    # Contour points are pixel centres; +0.5 puts them on the pixel grid pycocotools rasterises with.
    return [(c.reshape(-1, 2).astype(float) + 0.5).ravel().tolist() for c in contours if len(c) >= 3]


def _write_coco(out: str, split: str, split_idx: int, count: int, seed: int, h: int, w: int, knobs: Knobs):
    categories = [{"id": c, "name": CATEGORY_NAMES["coco"][c], "supercategory": "object"}
                  for c in sorted(CATEGORY_NAMES["coco"])]  # fmt: skip
    sizes = [(h, w), (w, h), (max(h, w), max(h, w)), (h, int(w * 1.25))]
    images, annotations = [], []
    ann_id = 1
    for k in range(count):
        rng = _video_rng(seed, split_idx, k)
        ih, iw = sizes[int(rng.integers(len(sizes)))]
        scene = _Scene(rng, CATEGORY_STYLES["coco"], ih, iw, 1, knobs, allow_enter=False)
        frames, masks = scene.render_all()
        frame = frames[0]
        image_id = k + 1
        file_name = f"{image_id:012d}.jpg"
        crowd = None
        if rng.random() < knobs.crowd_prob:
            crowd = _blob_region(rng, ih, iw, 6, 0.05 * min(ih, iw))
            crowd_cat = int(rng.choice(sorted(CATEGORY_NAMES["coco"])))
            style = CATEGORY_STYLES["coco"][crowd_cat]
            frame[crowd] = np.array(style.colour, np.uint8)
        for obj in _first_appearance_order(masks):
            m = masks[obj, 0] & (~crowd if crowd is not None else True)
            if m.sum() < 4:
                continue
            ys, xs = np.nonzero(m)
            if rng.random() < knobs.polygon_prob:
                segm = _mask_to_polygons(m)
            else:
                segm = io.encode_rle(m)
            annotations.append(dict(
                id=ann_id, image_id=image_id, category_id=scene.objects[obj].category, iscrowd=0,
                segmentation=segm, area=float(m.sum()),
                bbox=[float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
            ))  # fmt: skip
            ann_id += 1
        if crowd is not None:
            ys, xs = np.nonzero(crowd)
            annotations.append(dict(
                id=ann_id, image_id=image_id, category_id=crowd_cat, iscrowd=1,
                segmentation=io.encode_rle_uncompressed(crowd), area=float(crowd.sum()),
                bbox=[float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
            ))  # fmt: skip
            ann_id += 1
        io.write_image(os.path.join(out, split, file_name), frame)
        images.append(dict(id=image_id, file_name=file_name, height=ih, width=iw))
    io.write_json(os.path.join(out, "annotations", f"instances_{split}.json"),
                  dict(images=images, annotations=annotations, categories=categories))  # fmt: skip
    return [im["id"] for im in images]


# Each format's split writer: (out, split, split_idx, count, seed, h, w, frames, knobs) -> sequence ids.
_WRITERS = {
    "davis": _write_davis,
    "ytvis": _write_ytvis,
    "kitti_mots": _write_kitti,
    "coco": lambda out, split, split_idx, count, seed, h, w, _frames, k: _write_coco(
        out, split, split_idx, count, seed, h, w, k),
}
# Knob defaults a format changes: DAVIS-2017 counts objects in the first frame, so none enter later.
_FORMAT_KNOBS = {"davis": {"enter_prob": 0.0}}


def generate(
    fmt: str,
    out_dir: str,
    seed: int = 0,
    *,
    num_train: int = 8,
    num_val: int = 3,
    num_frames: int = 24,
    num_val_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    **knobs,
) -> dict:
    """Writes a synthetic dataset of format ``fmt`` under ``out_dir`` and returns a summary dict.

    ``num_train`` / ``num_val``: videos (images for coco) per split; ``num_frames``: frames per video
    (``num_val_frames``: per val video, when it differs — long train videos, a fixed-size val split);
    ``height`` x ``width``: frame size (default ``DEFAULT_SIZE[fmt]``); ``knobs``: fields of ``Knobs``
    (difficulty). The summary has ``root``, ``format``, ``splits`` ({split name: [sequence ids]}),
    ``val_gt`` (the ground-truth file or folder of the val split) and the knobs used.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown synthetic format {fmt!r}; expected one of {FORMATS}")
    unknown = set(knobs) - {f.name for f in dataclasses.fields(Knobs)}
    if unknown:
        known = [f.name for f in dataclasses.fields(Knobs)]
        raise ValueError(f"unknown synthetic knob(s) {sorted(unknown)}; known: {known}")
    knobs = {**_FORMAT_KNOBS.get(fmt, {}), **knobs}
    k = Knobs(**{key: tuple(v) if isinstance(v, list) else v for key, v in knobs.items()})
    if not (1 <= k.min_objects <= k.max_objects):
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {k.min_objects}, {k.max_objects}")
    h, w = height or DEFAULT_SIZE[fmt][0], width or DEFAULT_SIZE[fmt][1]
    out = os.path.abspath(out_dir)
    os.makedirs(out, exist_ok=True)
    splits = {}
    frames_per_split = (num_frames, num_frames if num_val_frames is None else num_val_frames)
    for split_idx, (split, count, n) in enumerate(zip(SPLITS[fmt], (num_train, num_val), frames_per_split)):
        if count <= 0:
            continue
        if fmt != "coco" and n < 1:
            raise ValueError(f"{split} videos need at least one frame, got {n}")
        splits[split] = _WRITERS[fmt](out, split, split_idx, count, seed, h, w, n, k)
    val = SPLITS[fmt][1]
    val_gt = {
        "davis": os.path.join(out, "Annotations_unsupervised", "480p"),
        "ytvis": os.path.join(out, f"{val}_gt.json"),
        "kitti_mots": os.path.join(out, "instances_txt"),
        "coco": os.path.join(out, "annotations", f"instances_{val}.json"),
    }[fmt]
    summary = dict(root=out, format=fmt, seed=seed, splits=splits, val_gt=val_gt, height=h, width=w,
                   num_frames=num_frames, num_val_frames=frames_per_split[1],
                   knobs=dataclasses.asdict(k))  # fmt: skip
    io.write_json(os.path.join(out, "synthetic_info.json"), summary)
    return summary


def dataset_config(fmt: str, root: str, which: str = "train", weight: float = 1.0) -> dict:
    """The ``config.data.datasets`` entry (a plain dict) reading split ``which`` ("train"/"val") of a
    synthetic dataset at ``root``."""
    if which not in ("train", "val"):
        raise ValueError(f"which must be 'train' or 'val', got {which!r}")
    split = SPLITS[fmt][0 if which == "train" else 1]
    return dict(format=fmt, root=root, split=split, weight=weight)
