"""Ray: the only place geoseg touches it."""

from geoseg.runtime.ray_jobs import blend_tiles, fit_model, predict_tiles, ray_session

__all__ = ["blend_tiles", "fit_model", "predict_tiles", "ray_session"]
