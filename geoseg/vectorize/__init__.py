"""Mosaic to polygons: polygonize per chunk, merge across seams, simplify, export.

``vectorize_mosaic`` is the stage for class mosaics; ``vectorize_instances``
for instance mosaics (one polygon per id). The building blocks are public so that a
runtime can polygonize chunks in parallel and merge them in order on one node.
"""

from geoseg.vectorize.classes import VectorOutputs, select_classes, vectorize_mosaic
from geoseg.vectorize.instances import InstanceVectorOutputs, vectorize_instances
from geoseg.vectorize.polygonize import ChunkPieces, polygonize_chunk
from geoseg.vectorize.seams import SeamMerger

__all__ = [
    "ChunkPieces",
    "InstanceVectorOutputs",
    "SeamMerger",
    "VectorOutputs",
    "polygonize_chunk",
    "select_classes",
    "vectorize_instances",
    "vectorize_mosaic",
]
