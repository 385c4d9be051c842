"""Ray: the only place geoseg touches it.

- :mod:`geoseg.runtime.session`: start or attach to Ray (``ray_session``).
- :mod:`geoseg.runtime.train_job`: training through Ray Train (``fit_model``).
- :mod:`geoseg.runtime.predict_pool`: prediction through a pool of Ray actors
  (``start_predictors``, ``predict_tiles``, ``blend_tiles``, ``detect_tiles``).
- :mod:`geoseg.runtime.tasks`: independent pieces of a stage as Ray tasks (``run_tasks``, ``iter_tasks``).
- :mod:`geoseg.runtime.jobs`: batch jobs on a cluster through Ray's Jobs API
  (``submit_job_file``, ``job_status``, ``job_logs``, ``follow_job_logs``).

The names are loaded lazily: a prediction actor imports
``geoseg.runtime.predict_pool`` in a fresh process, and must not pay for
importing Ray Train on the way.
"""

from importlib import import_module

__all__ = [
    "ActorPool",
    "actors_for",
    "blend_tiles",
    "calls_per_predictor",
    "detect_tiles",
    "fit_model",
    "follow_job_logs",
    "iter_tasks",
    "job_logs",
    "job_status",
    "predict_tiles",
    "ray_session",
    "run_tasks",
    "start_predictors",
    "submit_job_file",
]

_HOMES = {
    "ray_session": "session",
    "run_tasks": "tasks",
    "iter_tasks": "tasks",
    "fit_model": "train_job",
    "predict_tiles": "predict_pool",
    "start_predictors": "predict_pool",
    "ActorPool": "predict_pool",
    "actors_for": "predict_pool",
    "calls_per_predictor": "predict_pool",
    "blend_tiles": "predict_pool",
    "detect_tiles": "predict_pool",
    "submit_job_file": "jobs",
    "job_status": "jobs",
    "job_logs": "jobs",
    "follow_job_logs": "jobs",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"geoseg.runtime.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'geoseg.runtime' has no attribute {name!r}")
