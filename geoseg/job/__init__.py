"""Job orchestration: load a job, check its inputs, chain its stages, record the run, submit it to a cluster.

- :mod:`geoseg.job.load`: the job file, validated, with ``halo: auto`` measured.
- :mod:`geoseg.job.preflight`: every input checked before the first stage.
- :mod:`geoseg.job.registry`: the stages' runners, from the stage table.
- :mod:`geoseg.job.run`: ``run_job`` and ``validate_job``.
- :mod:`geoseg.job.runrecord`: ``runs/<run id>/run.json`` and the no-op rerun.
- :mod:`geoseg.job.submit`: ``geoseg submit`` through Ray's Jobs API.
"""

from geoseg.job.load import load_job
from geoseg.job.run import run_job, validate_job

__all__ = ["load_job", "run_job", "validate_job"]
