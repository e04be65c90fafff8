"""File I/O of the whole project: images, label PNGs, COCO RLEs, the MOTS text format, atomic writers.

Leaf module (imports nothing of the project), used by the readers, the synthetic generator, the
evaluation package, inference and the tools. Images are read with OpenCV and stay BGR (the network
sees BGR, spec §1.4). Label PNGs are read with Pillow because OpenCV expands palette (indexed) PNGs
to colours, losing the instance ids. RLEs and polygons go through pycocotools.

Every writer is atomic: it writes a temporary file in the target directory and ``os.replace``s it,
so a crash never leaves a half-written file; the file gets the mode an ordinary ``open()`` would
give it (``mkstemp`` alone makes it 0600).
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import string
import tempfile
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# ---------------------------------------------------------------------------------------------- reading


def read_image(path: str) -> np.ndarray:
    """Reads an image file as ``[H, W, 3] uint8`` BGR; a clear error naming the path if missing, corrupt or
    truncated (``cv2.imread`` only warns on a truncated JPEG and fills the missing rows with grey)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    data = np.fromfile(path, np.uint8)
    check_image_complete(data, path)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image (corrupt or unsupported format): {path}")
    return image


def check_image_complete(data: np.ndarray, path: str) -> None:
    """Raises ``ValueError`` when the JPEG or PNG file ``path`` (its bytes ``data [N] uint8``) is truncated;
    other formats are not checked. A file ending in its format's end marker (JPEG EOI ``FFD9``, PNG ``IEND``
    chunk; trailing zero padding allowed) is complete without further work. Otherwise Pillow decodes it,
    which raises on missing image data, so that legitimate bytes after the marker (some cameras append
    data) pass."""
    head = data[:8].tobytes()
    tail = data[-4096:].tobytes().rstrip(b"\0")
    if head[:2] == b"\xff\xd8":
        complete = tail.endswith(b"\xff\xd9")
    elif head == b"\x89PNG\r\n\x1a\n":
        complete = tail[-8:-4] == b"IEND"
    else:
        return
    if complete:
        return
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            im.load()
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's truncated / corrupt image errors
        raise ValueError(f"truncated or corrupt image (no end marker; {one_line(e)}): {path}") from e


def read_label_png(path: str) -> np.ndarray:
    """Reads a label PNG as an integer ``[H, W]`` array of stored values.

    Indexed (mode ``P``) PNGs give palette indices, 8-bit grey gives values, 16-bit PNGs (KITTI-MOTS
    instances, Mapillary instances) give their 16-bit values. Returned dtype is ``int32``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label PNG not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA"):
                raise ValueError(f"label PNG {path} is {im.mode}; expected an indexed (P), grey (L) or 16-bit PNG")
            arr = np.asarray(im)
    except (OSError, SyntaxError) as e:  # Pillow raises these on truncated / corrupt files
        raise ValueError(f"cannot decode label PNG (corrupt?): {path}: {e}") from e
    if arr.ndim != 2:
        raise ValueError(f"label PNG {path} has shape {arr.shape}; expected a single channel")
    return arr.astype(np.int32)


def read_index_png(path: str) -> np.ndarray:
    """Reads a PNG as a plain index array in its stored dtype, as the DAVIS toolkit does
    (``np.array(Image.open(path))``): the evaluation keeps the toolkit's uint8 semantics."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing PNG {path}")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(f"{path}: expected an indexed (P) or single-channel PNG, got mode {img.mode}")
            return np.array(img)
    except (OSError, SyntaxError) as e:  # Pillow raises these on truncated / corrupt files
        raise ValueError(f"{path}: cannot decode PNG (truncated or corrupt?): {e}") from e


def image_size(path: str) -> tuple[int, int]:
    """``(height, width)`` of an image from its header only (Pillow reads no pixel data)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image header (corrupt?): {path}: {e}") from e
    return h, w


def read_text(path: str, where_line: str = "{path}, line {line}") -> str:
    """A UTF-8 text file's contents; non-UTF-8 bytes are a ``ValueError`` naming the file and the line
    (``where_line`` formats the place, e.g. ``"{path}:{line}"``)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
        where = where_line.format(path=path, line=line)
        raise ValueError(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    # Newlines translated as text-mode open() does (line numbers unchanged); skipped when there are none.
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def read_json(path: str, what: str = "JSON file") -> Any:
    """A JSON file; non-UTF-8 bytes, malformed JSON or absurd nesting are a ``ValueError`` naming the file."""
    text = read_text(path, "{path} (line {line})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{what} {path} is nested too deeply to be read") from None


def is_int(value: Any) -> bool:
    """An integer of JSON / NumPy, not a bool (``True`` is an ``int`` to Python, never an id or a size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def expand_vars(value: str, field: str) -> str:
    """Expands ``$VARS`` and ``~`` in a configured path; an unset variable is a clear error naming ``field``."""
    missing = [
        name or braced
        for _, name, braced, _ in string.Template.pattern.findall(value)
        if (name or braced) and (name or braced) not in os.environ
    ]
    if missing:
        raise ValueError(f"config field {field}={value!r}: environment variable(s) {missing} not set")
    return os.path.expanduser(os.path.expandvars(value))


def expand_path(value: str, field: str) -> str:
    """``expand_vars`` made absolute (relative to the working directory)."""
    return os.path.abspath(expand_vars(value, field))


# ---------------------------------------------------------------------------------------------- RLE


def decode_segmentation(segm: Any, height: int, width: int, where: str) -> np.ndarray:
    """Decodes one COCO-style segmentation to ``[H, W] bool``.

    ``segm`` may be a compressed RLE dict (``counts`` str/bytes), an uncompressed RLE dict (``counts``
    list of run lengths, as YouTube-VIS ground truth), a bare compressed ``counts`` string (the
    authors' JSONs and KITTI-MOTS txt) or a polygon list. ``where`` names the file/frame/instance for
    errors; anything malformed (see ``segmentation_rle``) is a ``ValueError`` naming it.
    """
    rle = segmentation_rle(segm, height, width, where)
    try:
        m = mask_utils.decode(rle)
    except Exception as e:  # validated above; kept so that a pycocotools surprise still names the place
        raise ValueError(f"{where}: cannot decode RLE: {e}") from e
    if m.shape != (height, width):
        raise ValueError(f"{where}: decoded mask is {m.shape}, frame is {(height, width)}")
    return m.astype(bool)


def segmentation_rle(segm: Any, height: int, width: int, where: str) -> dict:
    """Any COCO-style segmentation (``decode_segmentation``'s forms) as a validated pycocotools RLE."""
    if isinstance(segm, list):
        polys = []
        for k, p in enumerate(segm):
            if not isinstance(p, list) or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in p):
                raise ValueError(f"{where}: polygon {k} must be a list of numbers [x0, y0, x1, y1, ...]")
            xy = np.asarray(p, np.float64)
            # pycocotools rasterises in int and allocates per pixel of the outline: a coordinate far outside
            # the frame overflows or exhausts memory, so anything beyond one frame size around it is refused.
            side = max(height, width)
            if not np.isfinite(xy).all() or (xy.size and (xy.min() < -side or xy.max() > 2 * side)):
                raise ValueError(f"{where}: polygon {k} has a coordinate that is not finite or far outside the "
                                 f"{height}x{width} frame")
            if len(p) >= 6:
                polys.append(p)
        if not polys:
            raise ValueError(f"{where}: polygon list has no polygon with >= 3 points")
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if isinstance(segm, (str, bytes, dict)):
        return checked_rle(segm, height, width, where)
    raise ValueError(f"{where}: unsupported segmentation type {type(segm).__name__}")


def checked_rle(segm: Any, height: int, width: int, where: str) -> dict:
    """Validates an RLE against the frame size and returns it as pycocotools wants it (bytes ``counts``).

    ``segm`` is a dict ``{size: [h, w], counts}`` or a bare compressed ``counts`` string (size = the frame's).
    ``size`` must be two non-negative ints equal to ``(height, width)``; ``counts`` a compressed string whose
    runs add up to ``height * width``, or a list of non-negative ints with that sum. pycocotools checks
    none of this: a mask of another size decodes into garbage, and merge / iou on it loop for minutes.
    Every failure is a ``ValueError`` starting with ``where`` and naming the field.
    """
    if height < 0 or width < 0 or height * width >= 2**32:  # pycocotools counts runs in uint32
        raise ValueError(f"{where}: frame size {height}x{width} is negative or too large for a COCO RLE")
    if isinstance(segm, (str, bytes)):
        counts = segm
    elif isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(f"{where}: RLE dict needs 'size' and 'counts', got keys {sorted(map(str, segm))}")
        size = segm["size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(s) and s >= 0 for s in size)):
            raise ValueError(f"{where}: RLE 'size' must be a list of two non-negative integers, got {short_repr(size)}")
        if [int(s) for s in size] != [height, width]:
            raise ValueError(f"{where}: RLE size {[int(s) for s in size]} disagrees with the frame size "
                             f"{[height, width]}")  # fmt: skip
        counts = segm["counts"]
    else:
        raise ValueError(f"{where}: not an RLE dict {{size, counts}} (got {type(segm).__name__})")
    if isinstance(counts, list):
        # type() first: JSON gives plain ints, and isinstance(numbers.Integral) costs 10x on long run lists.
        if not (all(type(c) is int and c >= 0 for c in counts) or all(is_int(c) and c >= 0 for c in counts)):
            raise ValueError(f"{where}: RLE 'counts' list must hold non-negative integers, got {short_repr(counts)}")
        total = sum(map(int, counts))  # Python ints: a NumPy int64 sum could wrap
        if total != height * width:
            raise ValueError(f"{where}: uncompressed RLE covers {total} pixels, frame has {height * width}")
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: RLE 'counts' string is not ASCII: {short_repr(counts)}") from None
    if not isinstance(counts, bytes):
        raise ValueError(f"{where}: RLE 'counts' must be a string or a list of run lengths, got {short_repr(counts)}")
    try:
        total = compressed_rle_total(counts)
    except ValueError as e:
        raise ValueError(f"{where}: RLE 'counts' {e}") from None
    if total != height * width:
        raise ValueError(f"{where}: RLE 'counts' covers {total} pixels but the frame has "
                         f"{height}x{width}={height * width}")  # fmt: skip
    return {"size": [height, width], "counts": counts}


def one_line(error: BaseException) -> str:
    """The error's message on one line (a library's message may span several), or its type's name."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def short_repr(value: Any, n: int = 60) -> str:
    """``repr(value)`` cut to ``n`` characters, for error messages quoting a bad field value."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def compressed_rle_total(counts: bytes) -> int:
    """Sum of the run lengths of a compressed COCO RLE string (the format of pycocotools' ``rleToString``).

    Each run is a little-endian base-32 varint (chars offset by 48; bit 5 = more chars follow, bit 4
    of the last char = sign) and every run after the third is stored as the difference to the run two
    places back. Vectorised with NumPy because it runs on every decoded mask.
    """
    a = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if a.size == 0:
        return 0
    if a.min() < 0 or a.max() > 63:
        raise ValueError("string has characters outside the encoding's range")
    last = (a & 0x20) == 0
    if not last[-1]:
        raise ValueError("string is truncated")
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    group = np.cumsum(np.concatenate([[0], last[:-1].astype(np.int64)]))
    k = np.arange(a.size) - starts[group]
    values = np.add.reduceat((a & 0x1F) << (5 * k), starts)
    n_chars = np.diff(np.append(starts, a.size))
    if n_chars.max() > 12:  # beyond 60 bits the shifts overflow (here and in pycocotools); no encoder writes that
        raise ValueError("string has a run of more than 12 characters")
    negative = (a[last] & 0x10) != 0
    values = values - (negative.astype(np.int64) << (5 * n_chars))
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    if (runs < 0).any():
        raise ValueError("string has a negative run length")
    if (runs >= 2**32).any():  # pycocotools stores runs as uint32; also keeps the int64 sum exact
        raise ValueError("string has a run length beyond 2**32")
    return int(runs.sum())


def encode_rles(masks: np.ndarray) -> list[dict]:
    """``[K, H, W]`` bool -> ``K`` compressed COCO RLEs ``{"size": [H, W], "counts": str}`` (JSON-ready),
    in one pycocotools call. The project's only RLE encoder (``encode_rle`` is its one-mask form)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [K, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def encode_rle(mask: np.ndarray) -> dict:
    """``[H, W] bool`` -> compressed COCO RLE dict with a ``str`` ``counts`` (JSON-serialisable)."""
    return encode_rles(np.asarray(mask)[None])[0]


def encode_rle_uncompressed(mask: np.ndarray) -> dict:
    """``[H, W] bool`` -> uncompressed RLE (column-major runs starting with a zero run), as YouTube-VIS GT.

    pycocotools has no public encoder to this form (it only reads it), hence NumPy."""
    flat = np.asarray(mask, bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def to_coco_rle(rle: dict) -> dict:
    """A JSON-style RLE (str counts, or uncompressed list counts) as pycocotools wants it (bytes counts)."""
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE, as in real YouTube-VIS ground truth
        h, w = rle["size"]
        return mask_utils.frPyObjects(rle, h, w)
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_areas(rles: list) -> np.ndarray:
    """``pycocotools.mask.area`` over any number of RLEs, as ``int64 [N]``.

    pycocotools 2.0.x builds its output with ``np.array((n,), dtype=np.uint8)``, which numpy 2 rejects
    (OverflowError) once a call gets more than 255 RLEs; chunks of 255 avoid that.
    """
    rles = list(rles)
    chunks = [np.asarray(mask_utils.area(rles[i : i + 255]), np.int64).reshape(-1) for i in range(0, len(rles), 255)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)


# ------------------------------------------------------------------------------------ MOTS text format


def format_mots_line(frame: int, object_id: int, class_id: int, rle: dict) -> str:
    """One line of the KITTI-MOTS / MOTSChallenge text format: ``frame object_id class_id h w rle``."""
    h, w = rle["size"]
    counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
    return f"{int(frame)} {int(object_id)} {int(class_id)} {int(h)} {int(w)} {counts}"


def parse_mots_line(line: str, where: str) -> tuple[int, int, int, int, int, str] | None:
    """The inverse of ``format_mots_line``: ``(frame, object_id, class_id, h, w, counts)``, or None for a
    blank line. ``where`` (file and line) heads the error of a malformed line. The one parser of the format:
    ground-truth readers, the evaluation and the post-processing all read results through it."""
    fields = line.split()
    if not fields:
        return None
    if len(fields) != 6:
        raise ValueError(f"{where}: expected 6 fields 'frame object_id class_id height width rle', got {len(fields)}")
    try:
        frame, obj, cls, h, w = (int(x) for x in fields[:5])
    except ValueError:
        raise ValueError(f"{where}: a non-integer frame / object id / class / size in {line.strip()[:80]!r}") from None
    return frame, obj, cls, h, w, fields[5]


# ------------------------------------------------------------------------------------ atomic writers


def ordinary_mode(directory: bool = False) -> int:
    """The mode ``open()`` (or ``mkdir`` for a ``directory``) would give a new file under the current umask;
    ``mkstemp`` / ``mkdtemp`` give 0600 / 0700 instead."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write(path: str, write: Callable[[str], None]) -> str:
    """Calls ``write(tmp_path)`` for a temp file next to ``path``, then renames it onto ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, ordinary_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_bytes(path: str, data: bytes) -> str:
    def _write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, _write)


def write_text(path: str, text: str) -> str:
    return write_bytes(path, text.encode("utf-8"))


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, bytes):
        return obj.decode("ascii")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_finite(obj):
    """JSON has no inf / nan: ``obj`` with them written as strings (metrics may hold them)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_finite(v) for v in obj]
    return obj


def write_json(path: str, obj: Any, *, indent: int | None = None) -> str:
    """Writes ``obj`` (NumPy scalars and arrays allowed) as JSON: compact, or with ``indent`` for people."""
    if indent is None:
        text = json.dumps(obj, separators=(",", ":"), default=_json_default)
    else:
        text = json.dumps(obj, indent=indent, default=_json_default) + "\n"
    return write_text(path, text)


def write_image(path: str, image: np.ndarray, jpeg_quality: int = 95) -> str:
    """Writes a ``[H, W, 3] uint8`` BGR image (format from the extension)."""

    def _write(tmp):
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if tmp.lower().endswith((".jpg", ".jpeg")) else []
        if not cv2.imwrite(tmp, image, params):
            raise OSError(f"cv2.imwrite failed for {path}")

    return atomic_write(path, _write)


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL-VOC colour map of DAVIS annotations: ``[n, 3] uint8`` (bits of the index spread over RGB)."""
    idx = np.arange(n)
    rgb = np.zeros((n, 3), np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (idx >> (3 * shift + channel)) & 1
            rgb[:, channel] |= bit << (7 - shift)
    return rgb.astype(np.uint8)


def write_indexed_png(path: str, labels: np.ndarray) -> str:
    """Writes ``[H, W]`` ids in 0..255 as an indexed (mode P) PNG with the VOC palette (DAVIS convention)."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"{path}: indexed PNG values must lie in 0..255")
    img = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


def write_uint16_png(path: str, labels: np.ndarray) -> str:
    """Writes ``[H, W]`` ids in 0..65535 as a 16-bit grey PNG (KITTI-MOTS / Mapillary instance PNGs)."""
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise ValueError(f"{path}: 16-bit PNG values must lie in 0..65535")
    arr = labels.astype(np.uint16)

    def _write(tmp):
        if not cv2.imwrite(tmp, arr):
            raise OSError(f"cv2.imwrite failed for {path}")

    return atomic_write(path, _write)
