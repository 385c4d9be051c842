"""Accuracy of a mosaic against labels: metrics, quicklooks, the colour baseline."""

__all__: list[str] = []
