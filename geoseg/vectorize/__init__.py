"""Mosaic to polygons: polygonize per chunk, merge across seams, simplify, export.

``vectorize_mosaic`` is the stage. The building blocks are public so that a
runtime can polygonize chunks in parallel and merge them in order on one node.
"""

from geoseg.vectorize.polygonize import ChunkPieces, polygonize_chunk
from geoseg.vectorize.seams import SeamMerger
from geoseg.vectorize.stage import VectorOutputs, select_classes, vectorize_mosaic

__all__ = [
    "ChunkPieces",
    "SeamMerger",
    "VectorOutputs",
    "polygonize_chunk",
    "select_classes",
    "vectorize_mosaic",
]
