"""Command line: parse, call the library, map errors to one line and an exit code.

Exit codes: 0 success; 2 bad job or input, 1 a known failure while running (a ``GeosegError``: its message, one
line per problem, no traceback); 1 for any other exception, a bug: its whole traceback, then one line saying so;
130 interrupted. ``GEOSEG_DEBUG=1`` lets every exception through with its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from geoseg._version import __version__
from geoseg.bench.commands import add_bench_commands
from geoseg.config.stages import STAGE_NAMES, STAGES
from geoseg.errors import GeosegError

__all__ = ["main"]


def _log(message: str) -> None:
    print(message, flush=True)


def _cmd_validate(args) -> int:
    from geoseg.job import validate_job

    job, stages = validate_job(args.job)
    _log(f"{args.job}: OK (job {job.name!r}, stages {', '.join(stages)})")
    return 0


def _cmd_run(args) -> int:
    from geoseg.job import run_job

    run_job(args.job, stages=args.stages, address=args.address, log=_log, force=args.force, verbose=args.verbose)
    return 0


def _stage_command(stage: str):
    def command(args) -> int:
        from geoseg.job import run_job

        run_job(args.job, stages=[stage], address=getattr(args, "address", None), log=_log, verbose=args.verbose)
        return 0

    return command


def _cmd_demo_data(args) -> int:
    from geoseg.synthetic import flood_demo_files, generate_demo

    out = Path(args.out)
    files = generate_demo(out, seed=args.seed, train_size=args.train_size, survey_size=args.survey_size)
    for name, scene in files.items():
        _log(f"demo-data: {name}: {scene.scene}, {scene.labels_gpkg}, {scene.labels_tif}")
    flood = flood_demo_files(out)
    _log(f"demo-data: roads: {flood.roads}")
    _log(f"demo-data: zones: {flood.zones}")
    _log(f"demo-data: flood truth: {flood.flood_truth}, {flood.flooded_buildings}")
    return 0


def _cmd_models(args) -> int:
    from geoseg.models.table import architecture_table

    for line in architecture_table(args.encoder):
        _log(line)
    return 0


def _cmd_weights_fetch(args) -> int:
    from geoseg.job.weights import fetch_job_weights

    fetch_job_weights(args.job, log=_log)
    return 0


def _cmd_export(args) -> int:
    from geoseg.io.cog import export_cog

    out = export_cog(Path(args.mosaic), Path(args.cog), array=args.array)
    _log(f"export: wrote {out} (Cloud-Optimized GeoTIFF of {args.array})")
    return 0


def _cluster_address(args) -> str | None:
    return args.address or os.environ.get("RAY_API_SERVER_ADDRESS")


def _cmd_submit(args) -> int:
    from geoseg.job.submit import submit_job

    sent = submit_job(
        args.job,
        address=_cluster_address(args),
        stages=args.stages,
        job_dir=args.job_dir,
        submission_id=args.submission_id,
    )
    print(sent.submission_id, flush=True)  # the one line on stdout, for scripts: ID=$(geoseg submit ...)
    print(
        f"geoseg: submitted job {sent.job_name!r} (stages {', '.join(sent.stages)}) to {sent.address} as "
        f"{sent.submission_id}; follow it with `geoseg logs {sent.submission_id} --address {sent.address} --follow`",
        file=sys.stderr,
        flush=True,
    )
    return 0


def _cmd_status(args) -> int:
    from geoseg.runtime.jobs import job_status

    status = job_status(args.submission_id, address=_cluster_address(args))
    _log(f"{status['submission_id']}: {status['status']}" + (f": {status['message']}" if status["message"] else ""))
    return 0


def _cmd_logs(args) -> int:
    from geoseg.runtime.jobs import follow_job_logs, job_logs

    address = _cluster_address(args)
    if not args.follow:
        sys.stdout.write(job_logs(args.submission_id, address=address))
        sys.stdout.flush()
        return 0

    def write(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    final = follow_job_logs(args.submission_id, address=address, write=write)
    print(f"geoseg: job {args.submission_id} {final}", file=sys.stderr, flush=True)
    return 0 if final == "SUCCEEDED" else 1


def _add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        help="the cluster's Ray dashboard (job server), e.g. http://HEAD_IP:8265 (default: RAY_API_SERVER_ADDRESS)",
    )


def _add_job_commands(sub) -> None:
    """``validate``, ``run`` and one command per stage (from :data:`geoseg.config.stages.STAGES`)."""
    p = sub.add_parser("validate", help="check a job file and its inputs; list every problem")
    p.add_argument("job", help="job YAML file")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help=f"run the stages a job names ({', '.join(STAGE_NAMES)})")
    p.add_argument("job", help="job YAML file")
    p.add_argument(
        "--stages", nargs="+", choices=STAGE_NAMES, help="run only these stages (default: the job's `stages:`)"
    )
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else the embedded local Ray)")
    p.add_argument(
        "--force",
        action="store_true",
        help="run every stage again, even when the last run already finished this job "
        "(by default such a rerun does nothing and says so)",
    )
    p.add_argument("--verbose", action="store_true", help="show Ray's own output here, not in the run's ray.log")
    p.set_defaults(func=_cmd_run)

    for stage in STAGES:
        p = sub.add_parser(stage.name, help=f"{stage.help} (one stage of `run`)")
        p.add_argument("job", help="job YAML file")
        if stage.uses_ray_address:
            p.add_argument("--address", help="Ray cluster address")
        p.add_argument("--verbose", action="store_true", help="show Ray's own output here, not in the run's ray.log")
        p.set_defaults(func=_stage_command(stage.name))


def _add_data_commands(sub) -> None:
    """``demo-data`` and ``export``."""
    p = sub.add_parser("demo-data", help="generate the demo training and survey scenes")
    p.add_argument("--out", default="data/demo", help="output folder (default: data/demo)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    p.add_argument("--train-size", type=int, default=3072, help="training scene side in pixels")
    p.add_argument("--survey-size", type=int, default=4096, help="survey scene side in pixels")
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser("export", help="export a mosaic array as a Cloud-Optimized GeoTIFF")
    p.add_argument("mosaic", help="mosaic.zarr folder written by `geoseg predict`")
    p.add_argument("--cog", required=True, help="output .tif path")
    p.add_argument(
        "--array",
        default="labels",
        choices=["labels", "valid", "scores"],
        help="mosaic array to export (default: labels)",
    )
    p.set_defaults(func=_cmd_export)


def _add_cluster_commands(sub) -> None:
    """``submit``, ``status`` and ``logs``: jobs on a Ray cluster through its Jobs API."""
    p = sub.add_parser(
        "submit",
        help="run a job on a Ray cluster through Ray's Jobs API (the job file travels "
        "with it); prints the submission id",
    )
    p.add_argument("job", help="job YAML file (validated here before it is sent)")
    _add_cluster_arguments(p)
    p.add_argument(
        "--stages", nargs="+", choices=STAGE_NAMES, help="run only these stages (default: the job's `stages:`)"
    )
    p.add_argument(
        "--job-dir",
        help="the job file's folder as the cluster's nodes see it, which its relative paths "
        "are resolved against (default: its absolute path here: a shared filesystem); "
        "given, the inputs are checked on the cluster, not here",
    )
    p.add_argument(
        "--submission-id",
        help="id for the job (default: Ray makes one); the cluster refuses a second "
        "job with the same id, so a schedule cannot run a day twice",
    )
    p.set_defaults(func=_cmd_submit)
    p = sub.add_parser("status", help="a submitted job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)")
    p.add_argument("submission_id", help="the id `geoseg submit` printed")
    _add_cluster_arguments(p)
    p.set_defaults(func=_cmd_status)
    p = sub.add_parser("logs", help="a submitted job's logs")
    p.add_argument("submission_id", help="the id `geoseg submit` printed")
    _add_cluster_arguments(p)
    p.add_argument("--follow", action="store_true", help="stream until the job ends; exit 0 if it succeeded, 1 if not")
    p.set_defaults(func=_cmd_logs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geoseg", description="Segment huge aerial GeoTIFFs into maps.")
    parser.add_argument("--version", action="version", version=f"geoseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_job_commands(sub)
    _add_data_commands(sub)
    add_bench_commands(sub)
    _add_cluster_commands(sub)
    p = sub.add_parser("models", help="list the model architectures")
    p.add_argument("--encoder", default="resnet18", help="encoder to size them with (default: resnet18)")
    p.set_defaults(func=_cmd_models)
    weights = sub.add_parser("weights", help="pretrained encoder weights").add_subparsers(dest="weights", required=True)
    p = weights.add_parser("fetch", help="download a job's model.encoder_weights into their library's cache")
    p.add_argument("job", help="job YAML file")
    p.set_defaults(func=_cmd_weights_fetch)
    return parser


def _bug_summary(exc: BaseException) -> str:
    """``Type: first line of the message`` of the exception that went wrong.

    An exception raised in another process arrives wrapped (Ray's ``RayTaskError``), its
    message the whole remote traceback; the wrapper holds the original as ``cause``.
    """
    cause = getattr(exc, "cause", None)
    while isinstance(cause, BaseException) and cause is not exc:
        exc, cause = cause, getattr(cause, "cause", None)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(os.environ.get("GEOSEG_DEBUG"))
    # s3:// inputs on an S3-compatible server: GDAL needs the endpoint in its own variables. Set before
    # Ray starts, so the embedded Ray's workers inherit them.
    from geoseg.io.remote import configure_gdal_for_endpoint

    configure_gdal_for_endpoint()
    try:
        return args.func(args)
    except GeosegError as exc:
        # Bad input (2) and known failures while running (1: a lost worker, a failed write): the
        # message alone, no traceback (GEOSEG_DEBUG=1 shows it, and the chained cause).
        if debug:
            raise
        for line in str(exc).splitlines():
            print(f"geoseg: error: {line}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("geoseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Anything else is a bug, here or in a Ray worker: the whole traceback (a worker's travels in
        # the message of the error that carries it), then one line saying so.
        if debug:
            raise
        traceback.print_exc()
        print(
            f"geoseg: bug: {_bug_summary(exc)} (this is a bug in geoseg; please report it with the traceback above)",
            file=sys.stderr,
            flush=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
