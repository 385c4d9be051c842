"""Job files: schema and loading."""

from geoseg.config.load import read_job_file
from geoseg.config.schema import Job
from geoseg.config.stages import STAGE_NAMES, STAGES, StageInfo

__all__ = ["STAGES", "STAGE_NAMES", "Job", "StageInfo", "read_job_file"]
