"""Command line: parse, call the library, map errors to one line and an exit code.

Exit codes: 0 success, 2 bad job or input (GeosegError), 1 failure while running.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from geoseg import __version__
from geoseg.errors import GeosegError

__all__ = ["main"]


def _log(message: str) -> None:
    print(message, flush=True)


def _cmd_validate(args) -> int:
    from geoseg.stages import validate_job

    job, stages = validate_job(args.job)
    _log(f"{args.job}: OK (job {job.name!r}, stages {', '.join(stages)})")
    return 0


def _cmd_run(args) -> int:
    from geoseg.stages import run_job

    run_job(args.job, stages=args.stages, address=args.address, log=_log)
    return 0


def _stage_command(stage: str):
    def command(args) -> int:
        from geoseg.stages import run_job

        run_job(args.job, stages=[stage], address=getattr(args, "address", None), log=_log)
        return 0

    return command


def _cmd_demo_data(args) -> int:
    from geoseg.synthetic import generate_demo

    out = Path(args.out)
    files = generate_demo(out, seed=args.seed, train_size=args.train_size, survey_size=args.survey_size)
    for name, scene in files.items():
        _log(f"demo-data: {name}: {scene.scene}, {scene.labels_gpkg}, {scene.labels_tif}")
    return 0


def _cmd_models(args) -> int:
    from geoseg.models import ARCHITECTURES, build_model, output_stride

    _log(f"{'arch':<15} {'parameters':>12} {'stride':>7} {'smallest tile':>14}")
    for arch in ARCHITECTURES:
        model = build_model(arch, in_channels=3, num_classes=5, encoder=args.encoder)
        stride = output_stride(model)
        params = sum(p.numel() for p in model.parameters())
        _log(f"{arch:<15} {params:>12,} {stride:>7} {stride:>14}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geoseg", description="Segment huge aerial GeoTIFFs into maps.")
    parser.add_argument("--version", action="version", version=f"geoseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a job file and its inputs; list every problem")
    p.add_argument("job", help="job YAML file")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="run the stages a job names (train, predict, vectorize, evaluate)")
    p.add_argument("job", help="job YAML file")
    p.add_argument("--stages", nargs="+", choices=["train", "predict", "vectorize", "evaluate"],
                   help="run only these stages (default: the job's `stages:`)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else the embedded local Ray)")
    p.set_defaults(func=_cmd_run)

    for stage, text in (("train", "train the model"), ("predict", "predict the scene into the Zarr mosaic"),
                        ("vectorize", "turn the mosaic into polygons"),
                        ("evaluate", "score the mosaic against labels")):
        p = sub.add_parser(stage, help=f"{text} (one stage of `run`)")
        p.add_argument("job", help="job YAML file")
        if stage in ("train", "predict"):
            p.add_argument("--address", help="Ray cluster address")
        p.set_defaults(func=_stage_command(stage))

    p = sub.add_parser("demo-data", help="generate the demo training and survey scenes")
    p.add_argument("--out", default="data/demo", help="output folder (default: data/demo)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    p.add_argument("--train-size", type=int, default=3072, help="training scene side in pixels")
    p.add_argument("--survey-size", type=int, default=4096, help="survey scene side in pixels")
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser("models", help="list the model architectures")
    p.add_argument("--encoder", default="resnet18", help="encoder to size them with (default: resnet18)")
    p.set_defaults(func=_cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(os.environ.get("GEOSEG_DEBUG"))
    try:
        return args.func(args)
    except GeosegError as exc:
        # User errors: the message alone, no traceback (GEOSEG_DEBUG=1 shows it).
        if debug:
            raise
        for line in str(exc).splitlines():
            print(f"geoseg: error: {line}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("geoseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
