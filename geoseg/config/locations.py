"""Where an input lives: a local path, or an object-storage URI (``s3://bucket/key``) read through GDAL.

The job schema turns every input field into one of the two; readers in
:mod:`geoseg.io` hand a :class:`RemotePath` to GDAL as ``/vsis3/bucket/key``
(see :mod:`geoseg.io.remote` for the credentials and endpoint).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

__all__ = ["SCHEMES", "RemotePath", "as_location", "is_uri"]

SCHEMES = ("s3://",)


def is_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEMES)


def as_location(value: str | PathLike[str]) -> Path | RemotePath:
    """``Path`` for a local path; :class:`RemotePath` for an object-storage URI (``Path`` would fold its ``//``)."""
    return RemotePath(value) if is_uri(value) else Path(value)


class RemotePath(str):
    """An object-storage URI with the few ``pathlib`` attributes geoseg reads (``name``, ``suffix``, ``stem``)."""

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind(".") :] if "." in name.lstrip(".") else ""

    @property
    def stem(self) -> str:
        return self.name[: len(self.name) - len(self.suffix)] if self.suffix else self.name

    def is_absolute(self) -> bool:
        return True

    def exists(self) -> bool:
        """Unknown without a request: the reader that opens it reports a missing object."""
        return True
