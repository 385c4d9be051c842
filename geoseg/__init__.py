"""geoseg: seamless, out-of-core segmentation of huge aerial GeoTIFFs."""

__version__ = "0.1.0"
__all__ = ["__version__"]
