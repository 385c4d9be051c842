"""Batched prediction of tiles (no Ray inside)."""

from geoseg.infer.predict import TilePredictor, predict_logits

__all__ = ["TilePredictor", "predict_logits"]
