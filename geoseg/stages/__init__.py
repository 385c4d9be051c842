"""The pipeline's stages, one module each: plain functions from a validated job to files on disk.

Each stage reads only what the previous one wrote, so a failed job restarts at
the failed stage. Which stages exist, and the job section each needs, is the
table in :mod:`geoseg.config.stages`; :mod:`geoseg.job` chains them.
"""

__all__: list[str] = []
