"""Progress lines shared by the stages that hand tiles to an actor pool (semantic and instance prediction)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["tile_progress"]


def tile_progress(total: int, finished: int, log: Callable[[str], None]) -> Callable[[int], None]:
    """A callback for the actor pool: logs "tiles done/total" about every tenth of the way."""
    step = max(1, total // 10)

    def progress(count: int) -> None:
        nonlocal finished
        before, finished = finished, finished + count
        if finished // step != before // step or finished == total:
            log(f"predict: tiles {finished}/{total}")

    return progress
