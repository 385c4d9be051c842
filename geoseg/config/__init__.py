"""Job files: schema and loading."""

from geoseg.config.load import load_job
from geoseg.config.schema import STAGES, Job

__all__ = ["Job", "STAGES", "load_job"]
