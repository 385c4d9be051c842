"""Run records: each ``geoseg run`` writes under a run id, and a finished job is not run twice.

Layout, under the job's ``output_dir``::

    runs/<run id>/run.json    one per run that got past validation
    runs/latest.json          a copy of the run.json of the latest run that finished (status "done")

A run id is the UTC start time plus four random hex digits, ``20261121T021500Z-3f9a``, so the
folders sort in time order. ``run.json`` (format ``geoseg-run/1``) is written atomically (a temp
name, then a rename) when the run starts, when each stage starts and ends, and when the run ends:

- ``run_id``, ``status`` (running, done or failed), ``error`` (the failed stage and the error's
  first line), ``started``/``ended`` (ISO 8601 UTC), ``seconds``, ``force``, ``host``, ``address``;
- ``job``: ``name``, ``file`` (absolute path) and ``sha256`` of the validated job
  (``job.model_dump_json()`` of the resolved job: defaults filled in and paths absolute, so comments,
  key order and formatting of the YAML do not count, and the same file moved elsewhere does);
- ``code``: ``geoseg_version``, ``git_commit`` when geoseg runs from a git checkout (else None),
  ``git_dirty``, and ``source_sha256``, a hash of the package's ``.py`` files, which tells code
  versions apart where git cannot (uncommitted edits, an installed wheel, a container image);
- ``stages_requested``; ``stages``: per stage ``status`` (pending, running, done, failed),
  ``started``, ``ended``, ``seconds``, ``error`` and ``outputs`` (the paths it wrote); predict also
  ``unread_tiles``, the tiles its mosaic leaves invalid because they could not be read
  (``predict.on_read_error: skip``): ``file``, ``tile``, ``row``, ``col``, ``height``, ``width``, ``reason``;
- ``checkpoint``: ``path`` and ``weights_sha256`` (the hash a mosaic's fingerprint holds);
- ``inputs``: the files the requested stages read, each ``role``, ``path``, ``size`` and ``mtime``
  (None for an ``s3://`` object, which is not asked for).

Idempotence (:func:`finished_run`). ``geoseg run JOB`` does nothing and says so in one line,
without starting Ray, when the most recent run under ``runs/`` (by start time):

1. finished: status done. A failed run, or one still marked running because its driver was
   killed, never counts, and the next run resumes as the stages always have (finished chunks
   skipped, the checkpoint reused);
2. ran the same job content, the same code (version, git commit, source hash) and the same stages;
3. read the same inputs (size and mtime): a scheduled job whose scene or labels were replaced in
   place runs again rather than reporting stale results as current;
4. left its outputs in place: the checkpoint with the recorded weights hash (train, predict), a
   complete mosaic made by those weights (predict), the polygon files (vectorize), ``metrics.json``
   and the quicklook (evaluate).

The most recent run is compared, not the most recent finished one: a later failed run, or a run of
another version of the job, may have rewritten the outputs. A no-op writes no run folder.
``--force`` (``run_job(..., force=True)``) skips the check and redoes every stage: train ignores
its "already trained" shortcut and drops Ray Train's folder for the run so nothing resumes; predict
starts the mosaic (and an instance model's detections) afresh; vectorize and evaluate always redo.

A stage that raises marks itself and the run ``failed`` with the error's first line (Ctrl-C:
"interrupted"), then the exception propagates unchanged, so exit codes stay as they were. A driver
killed outright leaves its run ``running``, which counts as unfinished all the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import geoseg._version
from geoseg.config import Job
from geoseg.config.paths import JobPaths

__all__ = ["LATEST", "RUN_FILE", "RunRecord", "code_version", "finished_run", "input_fingerprints"]

FORMAT = "geoseg-run/1"
RUN_FILE = "run.json"
LATEST = "latest.json"
_PACKAGE = Path(geoseg.__file__).resolve().parent


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _shown(stamp: str | None) -> str:
    """``2026-11-21T02:15:00.123456Z`` → ``2026-11-21 02:15:00 UTC``."""
    return f"{stamp[:10]} {stamp[11:19]} UTC" if stamp else "at an unknown time"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _error_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


def job_sha256(job: Job) -> str:
    return hashlib.sha256(job.model_dump_json().encode()).hexdigest()


def code_version() -> dict:
    """Geoseg's version, git commit (best effort) and a hash of its sources."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    commit = dirty = None
    root = _PACKAGE.parent
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()

        if Path(git("rev-parse", "--show-toplevel")).resolve() == root:  # geoseg's own checkout, not an outer one
            commit = git("rev-parse", "HEAD")
            dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", _PACKAGE.name))
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "geoseg_version": geoseg._version.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "source_sha256": digest.hexdigest(),
    }


def _checkpoint_path(job: Job) -> Path:
    """The checkpoint the outputs come from: predict's, which is the trained one unless the job names one."""
    return Path(job.predict.checkpoint) if job.predict and job.predict.checkpoint else JobPaths.of(job).checkpoint


def checkpoint_info(job: Job) -> dict:
    from geoseg.models.checkpoint import WEIGHTS, weights_sha256

    path = _checkpoint_path(job)
    return {"path": str(path), "weights_sha256": weights_sha256(path) if (path / WEIGHTS).is_file() else None}


IMPACT_INPUTS = ("pre_event", "permanent_water", "roads", "zones")
EVALUATE_TRUTHS = ("flood_truth", "flooded_buildings")


def input_fingerprints(job: Job, stages: list[str]) -> list[dict]:
    """Path, size and mtime of every file the requested stages read (vectorize reads only the mosaic)."""
    named = []
    if "train" in stages and job.train:
        for i, pair in enumerate(job.train.scenes):
            images = pair.image if isinstance(pair.image, list) else [pair.image]
            named += [
                (f"train.scenes[{i}].image" + (f"[{k}]" if len(images) > 1 else ""), path)
                for k, path in enumerate(images)
            ]
            named += [(f"train.scenes[{i}].{where}", path) for where, path in pair.label_paths()]  # each source
        if job.model.weights:
            named.append(("model.weights", job.model.weights))
    if {"predict", "evaluate"} & set(stages) and job.predict:
        scene = job.predict.scene
        if isinstance(scene, list):  # a survey's files, as the job lists them (a glob or STAC file as written)
            named += [(f"predict.scene[{i}]", path) for i, path in enumerate(scene)]
        else:
            named.append(("predict.scene", scene))
    named += [("panoptic.things", job.panoptic.things)] if "panoptic" in stages and job.panoptic else []
    if "impact" in stages and job.impact:
        named += [(f"impact.{key}", getattr(job.impact, key)) for key in IMPACT_INPUTS if getattr(job.impact, key)]
    if "evaluate" in stages and job.evaluate:
        named.append(("evaluate.labels", job.evaluate.labels))
        named += [(f"evaluate.{k}", getattr(job.evaluate, k)) for k in EVALUATE_TRUTHS if getattr(job.evaluate, k)]
    found = []
    for role, path in named:
        entry: dict[str, Any] = {"role": role, "path": str(path), "size": None, "mtime": None}
        if isinstance(path, Path):  # local; an s3:// object (a str subclass) is not asked for
            try:
                stat = Path(path).stat()
                entry.update(
                    size=stat.st_size,
                    mtime=datetime.fromtimestamp(stat.st_mtime, UTC)
                    .isoformat(timespec="microseconds")
                    .replace("+00:00", "Z"),
                )
            except OSError:
                entry["missing"] = True
        found.append(entry)
    return found


def stage_outputs(stage: str, job: Job, summary: dict) -> list[str]:
    """The files a finished stage leaves for later stages and for people."""
    paths = JobPaths.of(job)
    if stage == "train":
        from geoseg.models.checkpoint import CARD, WEIGHTS

        return [str(paths.checkpoint / WEIGHTS), str(paths.checkpoint / CARD)]
    if stage == "predict":
        return [str(paths.mosaic)] + ([str(summary["table"])] if summary.get("table") else [])
    if stage == "vectorize":
        return [str(summary[key]) for key in ("vectors", "geojson", "instance_table") if summary.get(key)]
    if stage == "evaluate":
        return [str(paths.metrics), str(paths.quicklook)]
    if stage in ("impact", "panoptic"):
        return [str(path) for path in summary.get("files", [])]
    return []


class RunRecord:
    """One run's ``run.json``, rewritten (atomically) as the run goes."""

    def __init__(self, folder: Path, data: dict, log: Callable[[str], None] = print):
        self.folder, self.data, self.log = folder, data, log
        self._clock = time.perf_counter()

    @property
    def path(self) -> Path:
        return self.folder / RUN_FILE

    @property
    def run_id(self) -> str:
        return self.data["run_id"]

    @classmethod
    def start(
        cls,
        job: Job,
        job_file: str | Path,
        stages: list[str],
        *,
        force: bool = False,
        address: str | None = None,
        code: dict | None = None,
        inputs: list[dict] | None = None,
        log: Callable[[str], None] = print,
    ) -> RunRecord:
        runs = JobPaths.of(job).runs
        runs.mkdir(parents=True, exist_ok=True)
        while True:  # the random suffix keeps two runs started in the same second apart
            run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(2)}"
            try:
                (runs / run_id).mkdir()
                break
            except FileExistsError:
                continue
        data: dict[str, Any] = {
            "format": FORMAT,
            "run_id": run_id,
            "status": "running",
            "error": None,
            "started": _now(),
            "ended": None,
            "seconds": None,
            "force": force,
            "host": socket.gethostname(),
            "address": address or job.runtime.address or os.environ.get("RAY_ADDRESS"),
            "job": {"name": job.name, "file": str(Path(job_file).resolve()), "sha256": job_sha256(job)},
            "code": code or code_version(),
            "stages_requested": list(stages),
            "stages": {
                stage: {
                    "status": "pending",
                    "started": None,
                    "ended": None,
                    "seconds": None,
                    "error": None,
                    "outputs": [],
                }
                for stage in stages
            },
            "checkpoint": {"path": str(_checkpoint_path(job)), "weights_sha256": None},
            "inputs": inputs if inputs is not None else input_fingerprints(job, stages),
        }
        record = cls(runs / run_id, data, log)
        record.write()
        return record

    def write(self) -> None:
        _write_json(self.path, self.data)

    @contextmanager
    def stage(self, name: str):
        """Mark ``name`` running; done when the block ends, failed (and the run too) when it raises.

        The block may put the stage's summary into the yielded dict's ``summary`` key.
        """
        entry = self.data["stages"][name]
        entry.update(status="running", started=_now())
        self.write()
        clock = time.perf_counter()
        result: dict = {}
        try:
            yield result
        except BaseException as exc:
            entry.update(
                status="failed", ended=_now(), seconds=round(time.perf_counter() - clock, 3), error=_error_line(exc)
            )
            self.fail(exc, stage=name)
            raise
        entry.update(status="done", ended=_now(), seconds=round(time.perf_counter() - clock, 3))
        if name == "predict":
            self._note_unread_tiles(entry)
        self.write()

    def _note_unread_tiles(self, entry: dict) -> None:
        """List the tiles predict's mosaic leaves invalid because they could not be read, and say where."""
        from geoseg.io.mosaic import open_mosaic
        from geoseg.io.unread import read_unread_tiles

        mosaic = next((Path(path) for path in entry["outputs"] if path.endswith(".zarr")), None)
        if mosaic is None or not mosaic.exists():
            return
        entry["unread_tiles"] = [asdict(tile) for tile in read_unread_tiles(open_mosaic(mosaic))]
        if entry["unread_tiles"]:
            count = len(entry["unread_tiles"])
            tiles = "1 tile could not be read and is" if count == 1 else f"{count} tiles could not be read and are"
            self.log(f"predict: {tiles} left invalid; listed in {self.path}")

    def note_checkpoint(self, job: Job) -> None:
        self.data["checkpoint"] = checkpoint_info(job)

    def fail(self, exc: BaseException, stage: str | None = None) -> None:
        """Mark the run failed with the error's first line (once: a stage's failure is kept)."""
        if self.data["status"] == "running":
            self.finish(error=f"{stage}: {_error_line(exc)}" if stage else _error_line(exc))

    def finish(self, error: str | None = None) -> None:
        """Status done (and ``runs/latest.json``), or failed with ``error``."""
        self.data.update(
            status="failed" if error else "done",
            error=error,
            ended=_now(),
            seconds=round(time.perf_counter() - self._clock, 3),
        )
        self.write()
        if not error:
            _write_json(self.folder.parent / LATEST, self.data)


def _runs(runs: Path) -> list[dict]:
    found = []
    for path in runs.glob(f"*/{RUN_FILE}"):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("format") == FORMAT:
            found.append(data)
    return sorted(found, key=lambda d: (str(d.get("started")), str(d.get("run_id"))))


def _mosaic_problem(path: Path, checkpoint_sha: str | None) -> str | None:
    from geoseg.errors import GeosegError
    from geoseg.io.mosaic import done_chunks, open_mosaic

    if not path.exists():
        return f"{path.name} is gone"
    try:
        mosaic = open_mosaic(path)
    except GeosegError:
        return f"{path.name} no longer opens"
    rows, cols = mosaic.grid
    if len(done_chunks(mosaic)) != rows * cols:
        return f"{path.name} is no longer complete"
    if checkpoint_sha and mosaic.fingerprint.get("checkpoint_sha256") != checkpoint_sha:
        return f"{path.name} was made by other weights"
    return None


def _difference(last: dict, job: Job, stages: list[str], code: dict, inputs: list[dict]) -> str | None:
    """Why ``last`` (the most recent run) does not make this one a no-op; None when it does."""
    if last.get("status") != "done":
        return f"the last run {last.get('run_id')} did not finish (status {last.get('status')})"
    if last.get("job", {}).get("sha256") != job_sha256(job):
        return f"the job changed since run {last['run_id']}"
    previous = last.get("code", {})
    if any(previous.get(key) != code[key] for key in ("geoseg_version", "git_commit", "source_sha256")):
        return f"geoseg's code changed since run {last['run_id']}"
    if last.get("stages_requested") != list(stages):
        return f"run {last['run_id']} ran other stages ({', '.join(last.get('stages_requested') or [])})"
    changed = [entry["role"] for entry in inputs if entry not in last.get("inputs", [])]
    if changed or len(inputs) != len(last.get("inputs", [])):
        return f"input {changed[0] if changed else 'list'} changed since run {last['run_id']}"
    sha = last.get("checkpoint", {}).get("weights_sha256")
    if {"train", "predict"} & set(stages) and sha and checkpoint_info(job)["weights_sha256"] != sha:
        return f"the checkpoint's weights changed since run {last['run_id']}"
    for stage in stages:
        outputs = last.get("stages", {}).get(stage, {}).get("outputs", [])
        missing = [path for path in outputs if not Path(path).exists()]
        if missing:
            return f"{Path(missing[0]).name} is gone since run {last['run_id']}"
    if "predict" in stages:
        problem = _mosaic_problem(JobPaths.of(job).mosaic, sha)
        if problem:
            return f"{problem} since run {last['run_id']}"
    return None


def finished_run(
    job: Job, stages: list[str], *, code: dict | None = None, inputs: list[dict] | None = None
) -> tuple[dict | None, str | None]:
    """Whether the most recent run already did this work (see the module doc).

    Returns ``(run, None)`` when it did, else ``(None, why)``; ``why`` is None when there was no earlier run.
    """
    runs = _runs(JobPaths.of(job).runs)
    if not runs:
        return None, None
    code = code or code_version()
    inputs = inputs if inputs is not None else input_fingerprints(job, stages)
    why = _difference(runs[-1], job, stages, code, inputs)
    return (None, why) if why else (runs[-1], None)


def noop_message(job: Job, run: dict) -> str:
    return (
        f"geoseg: job {job.name!r} already finished in run {run['run_id']} ({_shown(run.get('ended'))}); "
        "nothing to do (--force runs it again)"
    )
