"""Pipeline stages: each reads what the previous one wrote to disk."""

from geoseg.stages.run import run_job, validate_job

__all__ = ["run_job", "validate_job"]
