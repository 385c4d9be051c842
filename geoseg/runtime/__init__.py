"""Ray: the only place geoseg touches it."""

from geoseg.runtime.ray_jobs import fit_model, predict_tiles, ray_session

__all__ = ["fit_model", "predict_tiles", "ray_session"]
