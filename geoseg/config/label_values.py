"""How label attribute values and ``label_map`` keys compare: as text, with YAML's booleans spelled out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Literal

__all__ = ["BOX_SUFFIXES", "RASTER_SUFFIXES", "label_kind", "label_text", "label_words", "unknown_label_classes"]

RASTER_SUFFIXES = (".tif", ".tiff")  # label rasters: class values on a grid
BOX_SUFFIXES = (".csv",)  # box tables: xmin, ymin, xmax, ymax, label

LabelKind = Literal["vector", "raster", "boxes"]


def label_kind(location: str | PathLike[str]) -> LabelKind:
    """What a label file holds, by its name: a label raster, a box table, or vector features (anything else)."""
    suffix = str(location).lower().rsplit("/", 1)[-1]
    if suffix.endswith(RASTER_SUFFIXES):
        return "raster"
    if suffix.endswith(BOX_SUFFIXES):
        return "boxes"
    return "vector"


# PyYAML (YAML 1.1) reads these unquoted words, in any of the cases it accepts, as booleans.
_YAML_WORDS = {True: ("true", "yes", "on"), False: ("false", "no", "off")}


def label_text(value: object) -> str:
    """A label attribute value, or a ``label_map`` key, as the text the two are compared by.

    Booleans read ``true``/``false`` (YAML reads an unquoted ``yes``/``on`` key as true), whole
    numbers read without a decimal point (``1`` and ``1.0`` both read ``1``), a missing value reads ``''``.
    """
    if value is None or (isinstance(value, float) and value != value):  # NaN: a missing value in pandas
        return ""
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy's bool is no bool subclass
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def label_words(key: str) -> tuple[str, ...]:
    """The attribute texts (compared lower-cased) a ``label_map`` key matches besides itself."""
    for flag, words in _YAML_WORDS.items():
        if key == label_text(flag):
            return words
    return ()


def unknown_label_classes(
    scenes: Iterable[tuple[Mapping[str, str], str | None] | tuple[str, Mapping[str, str], str | None]],
    buffer_m: Iterable[str],
    classes: list[str],
    ignore: list[str],
) -> list[str]:
    """One line per class name that ``label_map``, ``label_class`` or ``buffer_m`` gives and ``classes`` lacks.

    ``scenes`` holds ``(label_map, label_class)`` per scene (named ``train.scenes[i]``), or
    ``(where, label_map, label_class)`` per label source (:meth:`TrainSpec.label_namings`).
    """
    known = ", ".join(classes)
    found = []
    for i, naming in enumerate(scenes):
        where, label_map, label_class = naming if len(naming) == 3 else (f"train.scenes[{i}]", *naming)
        found += [
            f"{where}.label_map: {key!r} maps to {name!r}, which is not in classes: ({known})"
            for key, name in label_map.items()
            if name not in classes and name not in ignore
        ]
        if label_class is not None and label_class not in classes:
            found.append(f"{where}.label_class: {label_class!r} is not in classes: ({known})")
    found += [f"train.buffer_m: {name!r} is not in classes: ({known})" for name in buffer_m if name not in classes]
    return found
