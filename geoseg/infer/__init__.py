"""Batched prediction of tiles (no Ray inside)."""

from geoseg.infer.predict import TileBlender, TilePredictor, predict_logits

__all__ = ["TileBlender", "TilePredictor", "predict_logits"]
