"""Prediction over a pool of Ray model actors.

Only tile descriptors travel between processes: each actor opens the scene
and the mosaic itself, reads its windows and writes its chunks, and returns
the indexes of the tiles it finished; a tile it could not read (with
``on_read_error="skip"``) comes back as an ``UnreadTile`` instead, handed to
the caller's ``on_unread``.

Why plain Ray actors and not Ray Data ``map_batches``: the work is already a list of
descriptors, so Ray Data's streaming executor had nothing to stream, and its driver loop
and three helper actors took ~10% of a 2-core machine and delayed the model actor's start
by ~2 s (``geoseg bench predict``). The pool keeps what mattered: fixed actors with CPU/GPU
reservations, bounded work in flight per actor, and restarts with retried batches when an
actor's process dies (a batch is idempotent: it rewrites the same chunks, same bytes).

This module imports no torch and no Ray Train: a model actor starts in a
fresh worker process that imports this module first, and on a 2-core machine
every second spent there is a second without predictions. The model code
(:mod:`geoseg.infer`) is imported inside the actor.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from geoseg.errors import GeosegError, StageError
from geoseg.tiling import Tile

if TYPE_CHECKING:  # imported by the actors themselves (see the module doc)
    from geoseg.infer.predict import OnReadError
    from geoseg.io.mosaic import UnreadTile

__all__ = [
    "ActorPool",
    "actors_for",
    "blend_tiles",
    "calls_per_predictor",
    "detect_tiles",
    "predict_tiles",
    "start_predictors",
]

ACTOR_RESTARTS = 3  # a dead actor process is restarted this many times; then the stage fails
# An actor's batches are retried for as long as the actor itself may come back (bounded by
# ACTOR_RESTARTS): a count of their own would run out in the seconds between losing a node and the
# cluster declaring it dead, every retry failing at once against the unreachable actor. Batches
# are idempotent (same chunks, same bytes), and an exception raised by the actor's code is not retried.
TASK_RETRIES = -1


class _PredictActor:
    """One model + open scene + open mosaic per actor; batches of tiles in, tile indexes out."""

    def __init__(self, checkpoint: str, scene: str, mosaic: str, **options: Any):  # TilePredictor's keywords
        from geoseg.infer import TilePredictor

        self.predictor = TilePredictor(checkpoint, scene, mosaic, **options)

    def run(self, tiles: list[Tile]) -> list[int | UnreadTile]:
        return self.predictor(tiles)


class _DetectActor:
    """Mask R-CNN + open scene per actor; batches of tiles in, tile indexes out (detections go to files)."""

    def __init__(self, checkpoint: str, scene: str, out_dir: str, thresholds: dict, **options: Any):
        from geoseg.infer.detect import TileDetector

        self.detector = TileDetector(checkpoint, scene, out_dir, **options, **thresholds)  # and its keywords

    def run(self, tiles: list[Tile]) -> list[int | UnreadTile]:
        return self.detector(tiles)


class _BlendActor:
    """Blend mode's second pass (no model)."""

    def __init__(self, scene: str, mosaic: str):
        from geoseg.infer import TileBlender

        self.blender = TileBlender(scene, mosaic)

    def run(self, tiles: list[Tile]) -> list[int]:
        return self.blender(tiles)


# Set on an exception raised by an actor's constructor (it survives pickling, in the exception's
# __dict__), so that the driver can say the actor could not start rather than that it failed.
_WHILE_STARTING = "geoseg_while_starting"


class _Started:
    """Builds the actor inside its Ray process, keeping an exception from its constructor.

    Ray reports a constructor's exception only as the text of an ``ActorDiedError``; kept here and
    raised by every call instead, it reaches the driver as itself (in a ``RayTaskError``), so
    that a geoseg error is shown as the user's error and a bug with its traceback.
    """

    actor_class: type = object  # set on the per-class subclass (see _started)

    def __init__(self, **constructor):
        self.actor, self.error = None, None
        try:
            self.actor = self.actor_class(**constructor)
        except Exception as error:  # raised again by every call, to reach the driver as itself
            with suppress(AttributeError):  # an exception that takes no attributes reads as a failed call
                setattr(error, _WHILE_STARTING, True)
            self.error = error

    def run(self, tiles: list[Tile]) -> list[int | UnreadTile]:
        if self.error is not None:
            raise self.error
        return self.actor.run(tiles)


def _started(actor_class: type) -> Any:  # Any: a class made at run time, which ray.remote cannot be typed for
    """``actor_class`` wrapped in :class:`_Started`, under its own name (in Ray's process titles and errors).

    The subclass is made here, not importable, so Ray's cloudpickle sends it by value; ``actor_class``
    itself travels by reference when it can be imported.
    """
    return type(
        actor_class.__name__,
        (_Started,),
        {
            "actor_class": actor_class,
            "__doc__": actor_class.__doc__,
            "__module__": actor_class.__module__,
            "__qualname__": actor_class.__qualname__,
        },
    )


def actors_for(workers: int, tiles: int, batch_size: int) -> int:
    """``workers``, but at most one actor per batch of ``tiles``: another would only start and stop."""
    return min(workers, -(-tiles // batch_size))


class ActorPool:
    """A fixed set of actors of one class, started at once, then fed batches of tiles.

    The actors start (a process each, imports, model load: seconds) as soon as the pool is made,
    and the caller's thread is free meanwhile: a stage makes the pool first and prepares its
    outputs while the actors load (see :func:`start_predictors`). Use it as a context manager:
    leaving it kills the actors, freeing their CPUs and GPUs at once.

    ``calls_per_actor`` > 1 runs that many batches in each actor at once, in threads (the actor
    must be thread-safe, as :class:`TilePredictor` is). One more batch waits in each actor's
    queue, so an actor never idles while the driver hands out the next one.
    """

    def __init__(self, actor_class, constructor: dict, *, workers: int, cpus: int, gpus: int, calls_per_actor: int = 1):
        remote_class = ray.remote(_started(actor_class)).options(
            num_cpus=cpus,
            num_gpus=gpus,
            max_concurrency=calls_per_actor,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=TASK_RETRIES,
        )
        self.per_actor = calls_per_actor + 1
        self.actors = [remote_class.remote(**constructor) for _ in range(max(1, workers))]

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for handle in self.actors:  # free the CPUs/GPUs now, not when the handles are collected
            ray.kill(handle)
        self.actors = []

    def run(
        self,
        tiles: list[Tile],
        *,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
        on_unread: Callable[[UnreadTile], None] | None = None,
    ) -> int:
        """Send ``tiles`` in batches to the actors; return how many tiles were processed.

        An actor returns each tile's index, or an ``UnreadTile`` for one it could not read
        and left invalid (``on_read_error="skip"``), which goes to ``on_unread``.
        """
        batches = deque(tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size))
        in_flight: dict[ray.ObjectRef, int] = {}  # result → the actor working on it
        load = [0] * len(self.actors)

        def fill(actor: int) -> None:
            while batches and load[actor] < self.per_actor:
                in_flight[self.actors[actor].run.remote(batches.popleft())] = actor
                load[actor] += 1

        done = 0
        for actor in range(len(self.actors)):
            fill(actor)
        while in_flight:
            [ready], _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(ready)
            load[actor] -= 1
            result = _result(ready)
            for item in result:
                if not isinstance(item, int) and on_unread:
                    on_unread(item)
            count = len(result)
            done += count
            if progress:
                progress(count)
            fill(actor)
        return done


def _run_pool(
    tiles: list[Tile],
    actor_class,
    constructor: dict,
    *,
    batch_size: int,
    workers: int,
    cpus: int,
    gpus: int,
    progress: Callable[[int], None] | None,
    calls_per_actor: int = 1,
    on_unread: Callable[[UnreadTile], None] | None = None,
) -> int:
    """Start a pool of at most one actor per batch, run ``tiles`` through it, stop it; the tiles processed."""
    if not tiles:
        return 0
    workers = actors_for(workers, len(tiles), batch_size)
    pool = ActorPool(actor_class, constructor, workers=workers, cpus=cpus, gpus=gpus, calls_per_actor=calls_per_actor)
    with pool:
        return pool.run(tiles, batch_size=batch_size, progress=progress, on_unread=on_unread)


def _result(ref: ray.ObjectRef) -> list[int | UnreadTile]:
    """The batch's tile indexes (and unread tiles), or the batch's failure.

    A geoseg error inside an actor is re-raised as itself; a failed read or write (``OSError``)
    and a lost actor become a one-line :class:`StageError` (the Ray error chained as its cause);
    any other exception is a bug and is re-raised as Ray's ``RayTaskError``, whose message holds
    the actor's traceback.
    """
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = error.cause
        if isinstance(cause, GeosegError):
            raise cause from None
        if isinstance(cause, OSError):  # disk full, storage gone, a file that vanished: says what failed
            what = "could not start" if getattr(cause, _WHILE_STARTING, False) else "failed"
            raise StageError(f"predict: a model actor {what}: {_one_line(cause)}") from error
        raise
    except ray.exceptions.RayError as error:  # the actor could not start, or died more than ACTOR_RESTARTS times
        lines = str(error).strip().splitlines() or [type(error).__name__]
        if getattr(error, "actor_init_failed", False):  # the message ends with the constructor's exception
            raise StageError(f"predict: a model actor could not start: {lines[-1].strip()}") from error
        raise StageError(f"predict: a model actor was lost: {lines[0].strip()}") from error


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__


def start_predictors(
    *,
    checkpoint: Path,
    scene: Path,
    mosaic: Path,
    workers: int,
    cpus_per_worker: int,
    use_gpu: bool,
    stitch: str = "crop",
    on_read_error: OnReadError = "stop",
    crf: dict | None = None,
) -> ActorPool:
    """Start the model actors of a prediction; feed them with :meth:`ActorPool.run`.

    Made before the mosaic is ready: an actor opens ``mosaic`` at its first batch, so the
    seconds an actor takes to start (its process, torch's import, the model) overlap the
    driver's own preparation. Each actor runs two batches at once: one in the model while
    the other is read or written (the predictor serialises the forward pass). In crop mode
    each tile writes its core; in blend mode (first pass) its window's probabilities.
    """
    constructor = {
        "checkpoint": str(checkpoint),
        "scene": str(scene),
        "mosaic": str(mosaic),
        "device": "cuda" if use_gpu else "cpu",
        "threads": cpus_per_worker,
        "stitch": stitch,
        "on_read_error": on_read_error,
        "crf": crf,
    }
    calls = calls_per_predictor(cpus_per_worker, use_gpu)
    return ActorPool(
        _PredictActor,
        constructor,
        workers=workers,
        cpus=cpus_per_worker,
        gpus=1 if use_gpu else 0,
        calls_per_actor=calls,
    )


def calls_per_predictor(cpus_per_worker: int, use_gpu: bool) -> int:
    """Batches an actor works on at once, each read and written in its own thread, one at a time in the model.

    CPU: two (the model's threads use the reserved cores). GPU: one per reserved CPU reading or writing
    (GDAL releases the GIL; a dataset handle per thread) plus the one on the device; bounded memory.
    """
    return cpus_per_worker + 1 if use_gpu else 2


def predict_tiles(
    tiles: list[Tile],
    *,
    checkpoint: Path,
    scene: Path,
    mosaic: Path,
    batch_size: int,
    workers: int,
    cpus_per_worker: int,
    use_gpu: bool,
    stitch: str = "crop",
    progress: Callable[[int], None] | None = None,
    on_read_error: OnReadError = "stop",
    on_unread: Callable[[UnreadTile], None] | None = None,
) -> int:
    """Run tiles through a pool of model actors started for them; return the number of tiles processed.

    With ``on_read_error`` skip, a tile that cannot be read is left invalid and handed to ``on_unread``.
    """
    if not tiles:
        return 0
    with start_predictors(
        checkpoint=checkpoint,
        scene=scene,
        mosaic=mosaic,
        workers=actors_for(workers, len(tiles), batch_size),
        cpus_per_worker=cpus_per_worker,
        use_gpu=use_gpu,
        stitch=stitch,
        on_read_error=on_read_error,
    ) as pool:
        return pool.run(tiles, batch_size=batch_size, progress=progress, on_unread=on_unread)


def blend_tiles(
    tiles: list[Tile], *, scene: Path, mosaic: Path, workers: int, progress: Callable[[int], None] | None = None
) -> int:
    """Blend mode's second pass: write each chunk once from the windows covering it."""
    return _run_pool(
        tiles,
        _BlendActor,
        {"scene": str(scene), "mosaic": str(mosaic)},
        batch_size=4,
        workers=workers,
        cpus=1,
        gpus=0,
        progress=progress,
    )


def detect_tiles(
    tiles: list[Tile],
    *,
    checkpoint: Path,
    scene: Path,
    out_dir: Path,
    batch_size: int,
    workers: int,
    cpus_per_worker: int,
    use_gpu: bool,
    thresholds: dict,
    progress: Callable[[int], None] | None = None,
    on_read_error: OnReadError = "stop",
    on_unread: Callable[[UnreadTile], None] | None = None,
) -> int:
    """Run tiles through a pool of Mask R-CNN actors; each tile's detections land in ``out_dir``.

    With ``on_read_error`` skip, a tile that cannot be read gets no file and is handed to ``on_unread``.
    """
    constructor = {
        "checkpoint": str(checkpoint),
        "scene": str(scene),
        "out_dir": str(out_dir),
        "device": "cuda" if use_gpu else "cpu",
        "threads": cpus_per_worker,
        "thresholds": thresholds,
        "on_read_error": on_read_error,
    }
    return _run_pool(
        tiles,
        _DetectActor,
        constructor,
        batch_size=batch_size,
        workers=workers,
        cpus=cpus_per_worker,
        gpus=1 if use_gpu else 0,
        progress=progress,
        calls_per_actor=calls_per_predictor(cpus_per_worker, use_gpu),
        on_unread=on_unread,
    )
