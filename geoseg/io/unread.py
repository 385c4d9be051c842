"""The mosaic's list of the tiles that could not be read (``predict.on_read_error: skip``), and why.

Kept in the group's ``geoseg.unread_tiles`` attribute, written by the driver once prediction ends;
the chunks themselves are marked :data:`~geoseg.io.mosaic.UNREAD` by the actors as they go.
"""

from __future__ import annotations

from dataclasses import asdict

from geoseg.io.mosaic import MosaicInfo, UnreadTile, geoseg_attrs

__all__ = ["read_unread_tiles", "record_unread_tiles"]


def record_unread_tiles(mosaic: MosaicInfo, tiles: list[UnreadTile]) -> None:
    """List ``tiles`` (sorted by position) in the group's ``geoseg.unread_tiles``; written by the driver only."""
    meta = dict(geoseg_attrs(mosaic.group))
    meta["unread_tiles"] = [asdict(tile) for tile in sorted(tiles, key=lambda t: (t.row, t.col))]
    mosaic.group.attrs["geoseg"] = meta


def read_unread_tiles(mosaic: MosaicInfo) -> list[UnreadTile]:
    """The tiles :func:`record_unread_tiles` listed (none for a mosaic that predates the list)."""
    return [UnreadTile(**entry) for entry in geoseg_attrs(mosaic.group).get("unread_tiles", [])]
