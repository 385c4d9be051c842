"""Inputs in object storage: ``s3://bucket/key`` scenes and labels, read through GDAL's /vsis3/.

How a job names such an input (:class:`~geoseg.config.locations.RemotePath`) is in
:mod:`geoseg.config.locations`; this module sets GDAL up to read it.

A job may name a scene or a label file by URI instead of a path. Rasters and
vectors are then read by GDAL (rasterio and pyogrio each bring their own
GDAL) with HTTP range requests, window by window, exactly as local files are:
nothing is downloaded whole.

Credentials never come from the job file. GDAL and boto read the standard
AWS sources: the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_PROFILE``),
``~/.aws/credentials`` and ``~/.aws/config``, or an instance role. For an
S3-compatible server (MinIO, Ceph, a test server) set ``AWS_ENDPOINT_URL``,
the variable boto and the AWS CLI use; :func:`configure_gdal_for_endpoint`
translates it into GDAL's own settings (``AWS_S3_ENDPOINT``, ``AWS_HTTPS``,
``AWS_VIRTUAL_HOSTING``) unless those are already set.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

__all__ = ["configure_gdal_for_endpoint"]


def configure_gdal_for_endpoint(environ=os.environ) -> dict[str, str]:
    """Derive GDAL's S3 settings from ``AWS_ENDPOINT_URL``; return what was set (nothing without it)."""
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if not endpoint or "AWS_S3_ENDPOINT" in environ:
        return {}
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    settings = {
        "AWS_S3_ENDPOINT": parsed.netloc + parsed.path.rstrip("/"),
        "AWS_HTTPS": "NO" if parsed.scheme == "http" else "YES",
        # Path-style requests (endpoint/bucket/key): what S3-compatible servers expect.
        "AWS_VIRTUAL_HOSTING": environ.get("AWS_VIRTUAL_HOSTING", "FALSE"),
    }
    environ.update(settings)
    return settings
