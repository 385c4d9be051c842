"""Outputs to object storage: copy each finished stage's outputs to an ``s3://`` prefix.

Stages write into ``output_dir`` (a local disk, or a folder every cluster node
shares), where renames are atomic and workers on any node can write their
Zarr chunks. When the job names ``publish: s3://bucket/prefix``, every stage's
outputs are copied there as soon as the stage is done, keeping their paths
under ``output_dir`` (``mosaic.zarr/``, ``vectors/``, ``metrics.json``, ...),
so ``xarray.open_zarr("s3://bucket/prefix/mosaic.zarr")`` and
``/vsis3/bucket/prefix/vectors/polygons.gpkg`` open them in place.

Object stores have no atomic rename, so completeness is marked the way batch
jobs usually mark it: an output is first deleted under the prefix (no object
of an older version survives beside the new one), then uploaded, and the run's
``runs/<run id>/run.json`` and ``runs/latest.json`` are uploaded last. A reader
that finds ``latest.json`` with ``"status": "done"`` finds every output it lists.

Credentials and endpoint come from the standard AWS environment (see
:mod:`geoseg.io.remote`), never from the job file.
"""

from __future__ import annotations

from pathlib import Path

from geoseg.config.locations import is_uri
from geoseg.errors import StageError

__all__ = ["publish_outputs"]


def _filesystem():
    import s3fs  # imported only when a job publishes

    # botocore reads AWS_ENDPOINT_URL, credentials, profile and region from the environment and ~/.aws.
    return s3fs.S3FileSystem()


def publish_outputs(outputs: list[str | Path], root: Path, target: str) -> list[str]:
    """Copy files or folders under ``root`` to the same relative keys under ``target``; return the URIs.

    Raises:
        StageError: an output lies outside ``root``, or the upload failed (one line, with the cause).
    """
    if not is_uri(target):
        raise StageError(f"publish: {target!r} is not an s3:// URI")
    fs = _filesystem()
    root = Path(root).resolve()
    written = []
    for output in outputs:
        local = Path(output).resolve()
        try:
            relative = local.relative_to(root).as_posix()
        except ValueError:
            raise StageError(
                f"publish: {local} is not under output_dir {root}; nothing outside it is published"
            ) from None
        remote = f"{target.rstrip('/')}/{relative}"
        try:
            if fs.exists(remote):
                fs.rm(remote, recursive=True)
            if local.is_dir():
                fs.put(str(local) + "/", remote + "/", recursive=True)
            else:
                fs.put_file(str(local), remote)
        except Exception as exc:  # botocore/aiohttp raise many kinds; the user needs the cause in one line
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise StageError(
                f"publish: uploading {local} to {remote} failed ({detail}); check the bucket, and the "
                "credentials and endpoint in the environment (AWS_* variables)"
            ) from None
        written.append(remote)
    return written
