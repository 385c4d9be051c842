"""Load a job file: safe YAML, schema validation, paths relative to the file.

All problems are gathered and raised together as one :class:`JobConfigError`,
one line each: ``jobs/x.yaml: tiling.halo: must be >= 0 (got -8)``.
"""

from __future__ import annotations

import posixpath
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from geoseg.config.locations import is_uri
from geoseg.config.schema import Job
from geoseg.errors import JobConfigError

__all__ = ["format_validation_error", "read_job_file", "rebase_job_paths"]

_Model = TypeVar("_Model", bound=BaseModel)


# pydantic's error types → our wording; the fallback is pydantic's own message.
def _plain(number: float) -> str:
    """A limit as a person writes it: 0, not 0.0."""
    return f"{number:g}" if isinstance(number, float) else str(number)


_MESSAGES: dict[str, Callable[[dict[str, Any]], str]] = {
    "greater_than_equal": lambda ctx: f"must be >= {_plain(ctx['ge'])}",
    "greater_than": lambda ctx: f"must be > {_plain(ctx['gt'])}",
    "less_than_equal": lambda ctx: f"must be <= {_plain(ctx['le'])}",
    "missing": lambda ctx: "required field is missing",
    "literal_error": lambda ctx: f"must be one of {ctx['expected']}",
    "too_short": lambda ctx: f"needs at least {ctx['min_length']} item(s)",
}


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the schema section that holds ``loc`` (list indexes skipped)."""
    model: type[BaseModel] = Job
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        kinds = _nested_types(model.model_fields[part].annotation)
        sections = [a for a in kinds if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sections:
            return []
        model = sections[0]
    return list(model.model_fields)


def format_validation_error(source: str, error: ValidationError) -> list[str]:
    """One ``file: dotted.field: message (got value)`` line per pydantic error."""
    lines = []
    for err in error.errors():
        field = ".".join(str(part) for part in err["loc"]) or "(top level)"
        make = _MESSAGES.get(err["type"])
        message = make(err.get("ctx", {})) if make else err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown key; remove it or use one of: {', '.join(_known_keys(err['loc']))}"
        got = "" if err["type"] in ("missing",) else f" (got {err['input']!r})"
        if err["type"] == "extra_forbidden" or isinstance(err.get("input"), (dict, list)):
            got = ""
        lines.append(f"{source}: {field}: {message}{got}")
    return lines


def _resolve_paths(model: _Model, base: Path) -> _Model:
    """Return a copy with every relative Path field made absolute against ``base``."""
    updates: dict[str, Any] = {}
    for name, value in model:
        if isinstance(value, Path) and not value.is_absolute():
            updates[name] = (base / value).resolve()
        elif isinstance(value, list) and any(isinstance(item, Path) for item in value):  # predict.scene: files
            updates[name] = [(base / v).resolve() if isinstance(v, Path) and not v.is_absolute() else v for v in value]
        elif isinstance(value, BaseModel):
            updates[name] = _resolve_paths(value, base)
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            updates[name] = type(value)(_resolve_paths(item, base) for item in value)  # keeps LabelSources
    return model.model_copy(update=updates)


def rebase_job_paths(data: dict[str, Any], base: str) -> dict[str, Any]:
    """A copy of a job file's mapping with every relative path made absolute against ``base``.

    ``base`` is the job file's folder as another machine (a cluster node) sees
    it, so the copy names the same files there wherever it is put. Absolute
    paths and object-storage URIs are kept as written; nothing else changes,
    and the copy is validated again by :func:`load_job` where it runs.
    """
    return _rebase(data, Job, posixpath.normpath(base))


def _rebase(data: dict[str, Any], model: type[BaseModel], base: str) -> dict[str, Any]:
    out = dict(data)
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None or value is None:
            continue  # an unknown key: load_job reports it where the copy runs
        kinds = _nested_types(field.annotation)
        if Path in kinds and isinstance(value, str):
            out[key] = _rebase_path(value, base)
            continue
        if Path in kinds and isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[key] = [_rebase_path(v, base) for v in value]
            continue
        sections = [kind for kind in kinds if isinstance(kind, type) and issubclass(kind, BaseModel)]
        if sections and isinstance(value, dict):
            out[key] = _rebase(value, sections[0], base)
        elif sections and isinstance(value, list):
            out[key] = [_rebase(item, sections[0], base) if isinstance(item, dict) else item for item in value]
    return out


def _rebase_path(value: str, base: str) -> str:
    if value and not is_uri(value) and not posixpath.isabs(value):
        return posixpath.normpath(posixpath.join(base, value))
    return value


def _nested_types(annotation: object) -> list[object]:
    """The annotation and every type inside it (``X | None``, ``list[X]``, ``Annotated[X, ...]``)."""
    found: list[object] = []
    todo = [annotation]  # a list: some annotation metadata is not hashable
    while todo:
        kind = todo.pop()
        if kind not in found:
            found.append(kind)
            todo.extend(typing.get_args(kind))
            if isinstance(kind, type) and issubclass(kind, list):  # a typed list, e.g. LabelSources(list[LabelSource])
                todo.extend(getattr(kind, "__orig_bases__", ()))
    return found


def read_job_file(path: str | Path) -> Job:
    """Read and validate a job file, paths made absolute; raise JobConfigError listing every problem.

    ``tiling.halo: auto`` is left as written: measuring it needs the model (see
    :func:`geoseg.job.load_job`, which every stage is handed a job from).
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise JobConfigError(f"{source}: job file not found; check the path (e.g. jobs/flood_survey.yaml)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8")  # valid: decoding stops at the first bad byte
        line, column = _line_column(before, len(before))
        raise JobConfigError(
            f"{source}:{line}:{column}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise JobConfigError(_yaml_problem(source, text, exc)) from None
    if not isinstance(data, dict):
        raise JobConfigError(f"{source}: expected a mapping of job keys at the top level (got {type(data).__name__})")
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        raise JobConfigError(format_validation_error(source, exc)) from None
    return _resolve_paths(job, path.resolve().parent)


_YAML_FIX = "fix the line shown (indent with spaces, not tabs; quote a value that holds ': ' or ' #')"


def _yaml_problem(source: str, text: str, error: yaml.YAMLError) -> str:
    """``file:line:column: not valid YAML: problem; fix``, then the offending line and a caret under the column.

    PyYAML names a parsed string ``"<unicode string>"`` and counts from 0; the
    message names the job file and counts lines and columns from 1, as editors do.
    """
    if isinstance(error, yaml.reader.ReaderError):  # a character YAML forbids; only its position is known
        line, column = _line_column(text, error.position)
        problem = f"unacceptable character #x{error.character:04x}: {error.reason}"
    elif isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        line, column = error.problem_mark.line + 1, error.problem_mark.column + 1
        problem = error.problem or error.context or type(error).__name__
        start = error.context_mark
        if (
            error.problem
            and error.context
            and start is not None
            and (start.line, start.column) != (line - 1, column - 1)
        ):
            problem += f" ({error.context} started at line {start.line + 1}, column {start.column + 1})"
    else:
        return f"{source}: not valid YAML: {' '.join(str(error).split())}; {_YAML_FIX}"
    lines = text.splitlines()
    shown = lines[line - 1] if line <= len(lines) else ""
    shown = "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in shown)  # no control codes on a terminal
    caret = "".join("\t" if ch == "\t" else " " for ch in shown[: column - 1]) + "^"
    return f"{source}:{line}:{column}: not valid YAML: {problem}; {_YAML_FIX}\n    {shown}\n    {caret}"


def _line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of character ``offset`` in ``text``."""
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1
