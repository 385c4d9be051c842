"""What every section of the job file shares: strict models and input locations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, PlainValidator

from geoseg.config.locations import RemotePath, is_uri

__all__ = ["InputLocation", "Strict"]


def _input_location(value: object) -> Path | RemotePath:
    """A local path (relative to the job file) or an object-storage URI such as ``s3://bucket/key``."""
    if is_uri(value):
        return RemotePath(value)
    if isinstance(value, (str, Path)) and str(value):
        return Path(value)
    raise ValueError("must be a file path or an s3:// URI")


# Inputs may live in object storage (read through GDAL); outputs are local or shared folders.
InputLocation = Annotated[Path, PlainValidator(_input_location)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
