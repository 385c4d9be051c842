"""Reading rasters and labels, and writing the mosaic and vector outputs."""

__all__: list[str] = []
