"""Category maps from image datasets to the video benchmarks' label spaces (spec §7.4).

A category map is a plain ``dict[int, int]`` from the source dataset's category id to a target:

* ``> 0``: keep the instance, relabelled to that target category id;
* ``DROP`` (0): drop the instance (its pixels become background, as the official code does);
* ``IGNORE`` (-1): put the instance's pixels into the ignore mask (Mapillary's riders and vehicles).

A source category that is not a key of the map is an error (a typo in a map would otherwise silently
drop a class). The tables below restate the official ``stemseg/data/metainfo/*.yaml`` files.
"""

from __future__ import annotations

from collections.abc import Mapping

DROP = 0
IGNORE = -1

# YouTube-VIS 2019 category names (ids 1..40).
YTVIS_CATEGORIES = {
    1: "person", 2: "giant_panda", 3: "lizard", 4: "parrot", 5: "skateboard", 6: "sedan", 7: "ape", 8: "dog",
    9: "snake", 10: "monkey", 11: "hand", 12: "rabbit", 13: "duck", 14: "cat", 15: "cow", 16: "fish",
    17: "train", 18: "horse", 19: "turtle", 20: "bear", 21: "motorbike", 22: "giraffe", 23: "leopard", 24: "fox",
    25: "deer", 26: "owl", 27: "surfboard", 28: "airplane", 29: "truck", 30: "zebra", 31: "tiger", 32: "elephant",
    33: "snowboard", 34: "boat", 35: "shark", 36: "mouse", 37: "frog", 38: "eagle", 39: "earless_seal",
    40: "tennis_racket",
}  # fmt: skip

# KITTI-MOTS / MOTSChallenge classes; 10 marks ignore regions in the ground truth.
KITTI_CATEGORIES = {1: "car", 2: "pedestrian"}
KITTI_IGNORE_CLASS = 10

# The 80 COCO categories with their (non-contiguous) ids.
COCO_CATEGORIES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut",
    61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}  # fmt: skip

# Pascal VOC class indices as stored in SegmentationClass PNGs (0 = background, 255 = void).
VOC_CATEGORIES = {
    1: "aeroplane", 2: "bicycle", 3: "bird", 4: "boat", 5: "bottle", 6: "bus", 7: "car", 8: "cat", 9: "chair",
    10: "cow", 11: "diningtable", 12: "dog", 13: "horse", 14: "motorbike", 15: "person", 16: "pottedplant",
    17: "sheep", 18: "sofa", 19: "train", 20: "tvmonitor",
}  # fmt: skip

# Mapillary Vistas v1.2: 66 labels; these ids are 1-based (= the instance PNG's value // 256, plus 1).
MAPILLARY_CATEGORIES = {
    1: "Bird", 2: "Ground Animal", 3: "Curb", 4: "Fence", 5: "Guard Rail", 6: "Barrier", 7: "Wall", 8: "Bike Lane",
    9: "Crosswalk - Plain", 10: "Curb Cut", 11: "Parking", 12: "Pedestrian Area", 13: "Rail Track", 14: "Road",
    15: "Service Lane", 16: "Sidewalk", 17: "Bridge", 18: "Building", 19: "Tunnel", 20: "Person", 21: "Bicyclist",
    22: "Motorcyclist", 23: "Other Rider", 24: "Lane Marking - Crosswalk", 25: "Lane Marking - General",
    26: "Mountain", 27: "Sand", 28: "Sky", 29: "Snow", 30: "Terrain", 31: "Vegetation", 32: "Water", 33: "Banner",
    34: "Bench", 35: "Bike Rack", 36: "Billboard", 37: "Catch Basin", 38: "CCTV Camera", 39: "Fire Hydrant",
    40: "Junction Box", 41: "Mailbox", 42: "Manhole", 43: "Phone Booth", 44: "Pothole", 45: "Street Light",
    46: "Pole", 47: "Traffic Sign Frame", 48: "Utility Pole", 49: "Traffic Light", 50: "Traffic Sign (Back)",
    51: "Traffic Sign (Front)", 52: "Trash Can", 53: "Bicycle", 54: "Boat", 55: "Bus", 56: "Car", 57: "Caravan",
    58: "Motorcycle", 59: "On Rails", 60: "Other Vehicle", 61: "Trailer", 62: "Truck", 63: "Wheeled Slow",
    64: "Car Mount", 65: "Ego Vehicle", 66: "Unlabeled",
}  # fmt: skip

_COCO_TO_YTVIS = {
    1: 1, 2: 21, 3: 6, 4: 21, 5: 28, 7: 17, 8: 29, 9: 34, 17: 14, 18: 8, 19: 18, 21: 15, 22: 32, 23: 20, 24: 30,
    25: 22, 36: 33, 41: 5, 42: 27, 43: 40,
}  # fmt: skip
_COCO_KEEP_DAVIS = {
    1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 34, 35, 36, 37, 38, 39, 41, 42, 43,
}  # fmt: skip
_VOC_TO_YTVIS = {1: 28, 4: 34, 7: 6, 8: 14, 10: 15, 12: 8, 13: 18, 14: 21, 15: 1, 19: 17}
_VOC_KEEP_DAVIS = {1, 2, 3, 4, 6, 7, 8, 10, 12, 13, 14, 15, 17, 19}
_MAPILLARY_TO_KITTI = {20: 2, 56: 1}
_MAPILLARY_IGNORE = {21, 22, 23, 53, 55, 57, 58, 59, 60, 61, 62, 63}


def _complete(sources, mapping: Mapping[int, int]) -> dict[int, int]:
    return {s: mapping.get(s, DROP) for s in sources}


NAMED_MAPS: dict[str, dict[int, int]] = {
    "coco_to_ytvis": _complete(COCO_CATEGORIES, _COCO_TO_YTVIS),
    "coco_to_davis": _complete(COCO_CATEGORIES, {c: 1 for c in _COCO_KEEP_DAVIS}),
    "voc_to_ytvis": _complete(VOC_CATEGORIES, _VOC_TO_YTVIS),
    "voc_to_davis": _complete(VOC_CATEGORIES, {c: 1 for c in _VOC_KEEP_DAVIS}),
    "mapillary_to_kitti": _complete(
        MAPILLARY_CATEGORIES, {**_MAPILLARY_TO_KITTI, **{c: IGNORE for c in _MAPILLARY_IGNORE}}
    ),
}

# The map a format uses when the dataset config names none.
DEFAULT_MAPS = {"mapillary": "mapillary_to_kitti"}


def resolve_category_map(spec, field: str = "category_map") -> dict[int, int] | None:
    """Turns a config value into a category map.

    ``spec`` is ``None``/``""`` (no map: keep the dataset's own ids), a name in ``NAMED_MAPS``, or a
    mapping ``{source id: target}`` (keys may be strings, as in a JSON/ConfigDict).
    """
    if spec is None or spec == "":
        return None
    if isinstance(spec, str):
        if spec not in NAMED_MAPS:
            raise ValueError(f"config field {field}={spec!r}: unknown category map; known: {sorted(NAMED_MAPS)}")
        return dict(NAMED_MAPS[spec])
    try:
        items = spec.items()
    except AttributeError:
        raise ValueError(f"config field {field}: expected a map name or a dict, got {type(spec).__name__}") from None
    out = {}
    for k, v in items:
        v = DROP if v is None else int(v)
        if v < IGNORE:
            raise ValueError(f"config field {field}: target {v} for source {k!r} must be > 0, 0 (drop) or -1 (ignore)")
        out[int(k)] = v
    return out


def class_agnostic(mapping: dict[int, int] | None, sources) -> dict[int, int]:
    """Class-agnostic version of ``mapping`` (or of the identity on ``sources``): every kept category -> 1."""
    base = mapping if mapping is not None else {int(s): int(s) for s in sources}
    return {s: (1 if t > 0 else t) for s, t in base.items()}


def apply_category(mapping: dict[int, int] | None, category: int, where: str) -> int:
    """Maps one source category (identity without a map); an id outside the map is a ``ValueError``."""
    if mapping is None:
        return category
    if category not in mapping:
        raise ValueError(f"{where}: category {category} is not in the category map (keys {sorted(mapping)})")
    return mapping[category]
