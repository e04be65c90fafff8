"""Checks of the configured datasets before (or instead of) training: every problem listed at once.

Two levels (``tools/check_dataset.py``):

* metadata (``check_metadata``, cheap, no pixel decoded): every dataset loads, every category id has a class
  in the model, every frame file exists. ``pipeline.load_sources`` runs it on the training datasets, so
  ``--mode train`` stops before its first step with one message listing them.
* pixels (``check_pixels``): every mask of every record decoded once (``record.masks.load``), every frame
  decoded (``io.read_image``: a truncated JPEG/PNG is an error, not a grey-filled frame) and its size
  compared with the annotations'. Masks decode lazily during training (right for memory), so without this a
  broken RLE surfaces only at the step that samples it.

Problems are ``Problem`` rows naming the dataset's config field, the file, the record, the frame and the
field that is wrong.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from stemseg_jax.io import one_line, read_image

MAX_LISTED = 20  # problems shown in one error message; the check tool lists them all


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    Attributes:
      dataset: its config field (``data.datasets.kitti_mots``, ``data.val_dataset``).
      file: the file at fault (annotations, frame image, mask PNG), or the dataset root.
      record: the record (sequence / video id / image id), "" for the whole dataset.
      frame: the frame index in the record, None when not about one frame.
      field: what is wrong: ``load``, ``category_id``, ``frame_file``, ``masks``, ``image``, ``image_size``.
      message: the reader's or decoder's message.
    """

    dataset: str
    file: str
    record: str
    frame: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = [self.dataset]
        if self.record:
            where.append(f"record {self.record!r}")
        if self.frame is not None:
            where.append(f"frame {self.frame}")
        return f"{', '.join(where)}: {self.field}: {self.message} ({self.file})"


def configured_datasets(config, *, train: bool = True, val: bool = True) -> list[tuple[str, Mapping[str, Any]]]:
    """``(config field, entry)`` of every ``config.data.datasets`` entry (sorted) and of ``data.val_dataset``
    when one is configured (it has a ``format``)."""
    out = []
    if train:
        out += [(f"data.datasets.{n}", config.data.datasets[n]) for n in sorted(config.data.datasets.keys())]
    val_cfg = config.data.get("val_dataset")
    if val and val_cfg is not None and "format" in val_cfg and val_cfg["format"]:
        out.append(("data.val_dataset", val_cfg))
    return out


def model_class_range(config) -> int | None:
    """The number of classes a training category id must be below (``model.num_classes``, background 0
    included), or None when the ids are not used: ``data.class_agnostic`` (every instance becomes class 1) or
    no semantic head (no loss term reads them)."""
    if config.data.get("class_agnostic", False) or not config.model.use_semseg_head:
        return None
    return int(config.model.num_classes)


def category_problems(records: Sequence[Any], dataset: str, num_classes: int | None) -> list[Problem]:
    """Records whose category ids (after the dataset's category map) are not a class of the model: outside
    ``1 .. num_classes - 1``. Such an id gives a NaN loss at the first step that samples it (an out-of-range
    one-hot), or with ``loss.target_rule="area"`` is silently dropped from the semantic targets."""
    if num_classes is None:
        return []
    problems = []
    for r in records:
        bad = sorted({c for c in r.categories.values() if not (isinstance(c, int) and 1 <= c < num_classes)})
        for c in bad:
            instances = sorted(i for i, ci in r.categories.items() if ci == c)
            problems.append(Problem(
                dataset, r.source, r.name, None, "category_id",
                f"category id {c} (instances {instances[:5]}{' ...' if len(instances) > 5 else ''}) has no class in "
                f"the model: model.num_classes={num_classes} (background 0 included) allows 1..{num_classes - 1}; "
                "set model.num_classes, a category_map on the dataset or data.class_agnostic=True",
            ))
    return problems


def frame_file_problems(records: Sequence[Any], dataset: str) -> list[Problem]:
    """Frames whose image file does not exist (one stat per frame: no decoding)."""
    problems = []
    for r in records:
        for t, path in enumerate(r.frame_paths):
            if not os.path.isfile(path):
                problems.append(Problem(dataset, path, r.name, t, "frame_file", "frame image not found"))
    return problems


def check_metadata(
    config, *, train: bool = True, val: bool = True, records_by_field: Mapping[str, Sequence[Any]] | None = None
) -> tuple[dict[str, list[Any]], list[Problem]]:
    """Loads every configured dataset and checks what needs no pixel: that it loads, its category ids (the
    training datasets'), its frame files. Returns the records of the datasets that loaded (by config field)
    and the problems. ``records_by_field`` gives already loaded records instead of the readers."""
    from stemseg_jax.data.readers import load_dataset

    num_classes = model_class_range(config)
    loaded, problems = {}, []
    for field, ds_cfg in configured_datasets(config, train=train, val=val):
        if records_by_field is not None and field in records_by_field:
            records = list(records_by_field[field])
        else:
            try:
                records = load_dataset(ds_cfg, field)
            except (OSError, ValueError) as e:
                root = str(ds_cfg["root"]) if "root" in ds_cfg else ""
                problems.append(Problem(field, root, "", None, "load", one_line(e)))
                continue
        loaded[field] = records
        if field.startswith("data.datasets."):
            problems += category_problems(records, field, num_classes)
        problems += frame_file_problems(records, field)
    return loaded, problems


def record_checks(record) -> int:
    """The number of units ``check_record_pixels`` reports progress in for ``record``: one per frame."""
    return record.num_frames


def check_record_pixels(record, dataset: str, *, progress: Callable[[int], None] | None = None) -> list[Problem]:
    """Decodes every frame's image and masks of ``record`` once (frame by frame, so a long video costs one
    frame's masks in memory) and checks them against the record's size."""
    problems = []
    ids = list(record.instance_ids)
    for t, path in enumerate(record.frame_paths):
        try:
            image = read_image(path)
            if image.shape[:2] != (record.height, record.width):
                problems.append(Problem(
                    dataset, path, record.name, t, "image_size",
                    f"frame is {image.shape[1]}x{image.shape[0]}, the annotations say {record.width}x{record.height}",
                ))
        except (OSError, ValueError) as e:
            problems.append(Problem(dataset, path, record.name, t, "image", one_line(e)))
        try:
            masks, ignore = record.masks.load([t], ids)
            want = (record.height, record.width)
            if masks.shape != (len(ids), 1) + want or ignore.shape != (1,) + want:
                problems.append(Problem(
                    dataset, record.source, record.name, t, "masks",
                    f"masks {tuple(masks.shape)} / ignore {tuple(ignore.shape)}, expected "
                    f"{(len(ids), 1) + want} / {(1,) + want}",
                ))
        except Exception as e:  # noqa: BLE001 (a decoder's own exception is a problem of this record too)
            problems.append(Problem(dataset, record.source, record.name, t, "masks", one_line(e)))
        if progress is not None:
            progress(1)
    return problems


def check_pixels(records_by_field: Mapping[str, Sequence[Any]], *,
                 progress: Callable[[int], None] | None = None) -> list[Problem]:
    """``check_record_pixels`` over every record of every dataset."""
    problems = []
    for field, records in records_by_field.items():
        for r in records:
            problems += check_record_pixels(r, field, progress=progress)
    return problems


def raise_if_problems(problems: Iterable[Problem], what: str = "training data") -> None:
    """One ``ValueError`` listing the first ``MAX_LISTED`` problems (and how many more), if any."""
    problems = list(problems)
    if not problems:
        return
    shown = "; ".join(str(p) for p in problems[:MAX_LISTED])
    more = f"; ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise ValueError(f"{what}: {len(problems)} problem(s): {shown}{more} "
                     "(tools/check_dataset.py --config ... lists them all and decodes every mask)")

