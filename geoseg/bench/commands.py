"""The ``geoseg bench …`` commands: their arguments and how each prints its one JSON line.

Each benchmark's module is imported only when its command runs (torch and Ray are heavy to import).
Progress goes to stderr, the JSON line to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geoseg.io.heap import keep_freed_memory

__all__ = ["add_bench_commands"]


def _cmd_bench_predict(args) -> int:
    import json

    from geoseg.bench.predict import bench_predict

    keep_freed_memory()  # the model-only yardstick runs in this process: with the model actors' allocator

    log = lambda message: print(message, file=sys.stderr, flush=True)
    workdir = Path(args.workdir) if args.workdir else None
    if args.model == "null":
        from geoseg.bench.feed import bench_feed

        result = bench_feed(
            size=args.size,
            tile_size=args.tile_size,
            halo=args.halo,
            batch_size=args.batch_size,
            workdir=workdir,
            log=log,
        )
        print(json.dumps(result), flush=True)
        return 0
    options = json.loads(args.options) if args.options else None
    result = bench_predict(
        size=args.size,
        tile_size=args.tile_size,
        halo=args.halo,
        batch_size=args.batch_size,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        use_gpu=args.gpu,
        arch=args.arch,
        encoder=args.encoder,
        options=options,
        workdir=workdir,
        log=log,
    )
    print(json.dumps(result), flush=True)  # the one line on stdout; progress went to stderr
    return 0


def _cmd_bench_decode(args) -> int:
    import json

    from geoseg.bench.decode import bench_decode

    result = bench_decode(
        size=args.size,
        tile_size=args.tile_size,
        halo=args.halo,
        threads=args.threads,
        workdir=Path(args.workdir) if args.workdir else None,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(json.dumps(result), flush=True)
    return 0


def _cmd_bench_train(args) -> int:
    import json

    from geoseg.bench.train import bench_train

    keep_freed_memory()  # the plain loop runs in this process: with the Ray Train workers' allocator

    options = json.loads(args.options) if args.options else None
    result = bench_train(
        size=args.size,
        tile_size=args.tile_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps=args.steps,
        cpus=args.cpus,
        arch=args.arch,
        encoder=args.encoder,
        options=options,
        workdir=Path(args.workdir) if args.workdir else None,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(json.dumps(result), flush=True)
    return 0


def _cmd_bench_merge(args) -> int:
    import json

    from geoseg.bench.merge import bench_merge

    result = bench_merge(args.job, log=lambda message: print(message, file=sys.stderr, flush=True))
    print(json.dumps(result), flush=True)
    return 0


def _cmd_bench_pipeline(args) -> int:
    from geoseg.bench.pipeline import run_pipeline_command

    return run_pipeline_command(args)


def _cmd_bench_zoo(args) -> int:
    import json
    from dataclasses import asdict

    from geoseg.bench.zoo import ZooBudget, bench_zoo

    budget = ZooBudget(
        epochs=args.epochs, steps_per_epoch=args.steps, batch_size=args.batch_size, crop=args.crop or None
    )
    split = lambda names: [n.strip() for n in names.split(",") if n.strip()] if names else None
    rows = bench_zoo(
        args.job,
        args.out,
        archs=split(args.archs),
        crf_archs=split(args.crf),
        budget=budget,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(json.dumps({"budget": asdict(budget), "rows": [asdict(row) for row in rows]}), flush=True)
    return 0


def _add_bench_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model and work folder, the same for every benchmark."""
    p.add_argument("--arch", default="unet")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--options", help="JSON model options, e.g. '{\"decoder_channels\": [128, 64, 32, 16, 8]}'")
    p.add_argument("--workdir", help="where the synthetic scene and outputs go (default: a temporary folder)")


def add_bench_commands(sub) -> None:
    """``bench predict``, ``decode``, ``train``, ``merge``, ``pipeline`` and ``zoo``."""
    p = sub.add_parser("bench", help="benchmarks that print one JSON line")
    bench = p.add_subparsers(dest="bench", required=True)
    p = bench.add_parser("predict", help="synthesise an N x N GeoTIFF and predict it; throughput and peak memory")
    p.add_argument("--size", type=int, default=4096, help="scene side in pixels (default: 4096)")
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--halo", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=int, default=2)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (bf16, channels_last)")
    p.add_argument(
        "--model",
        choices=["random", "null"],
        default="random",
        help="random: a randomly initialised --arch (default); null: a model that does no work, timed with 1 and "
        "every core against reading alone (the feed's ceiling; --workers/--cpus-per-worker/--gpu/--arch unused)",
    )
    _add_bench_model_arguments(p)
    p.set_defaults(func=_cmd_bench_predict)
    p = bench.add_parser("decode", help="read every tile window of the scene and nothing else: the feed's ceiling")
    p.add_argument("--size", type=int, default=4096, help="scene side in pixels (default: 4096)")
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--halo", type=int, default=32)
    p.add_argument("--threads", type=int, nargs="+", help="reader thread counts to time (default: 1 and every core)")
    p.add_argument("--workdir", help="where the synthetic scene is (kept) or written (default: a temporary folder)")
    p.set_defaults(func=_cmd_bench_decode)
    p = bench.add_parser("train", help="training samples/s: Ray Train with 1 and 2 workers against a plain loop")
    p.add_argument("--size", type=int, default=2048, help="synthetic training scene side in pixels (default: 2048)")
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is left out of the rates")
    p.add_argument("--steps", type=int, default=10, help="steps per epoch")
    p.add_argument("--cpus", type=int, help="cores in all (default: all of this machine's)")
    _add_bench_model_arguments(p)
    p.set_defaults(func=_cmd_bench_train)
    p = bench.add_parser(
        "merge",
        help="an instance job's raw tile detections merged by geoseg and SAHI-style; "
        "splits, duplicates, merged neighbours, F1, mask AP",
    )
    p.add_argument("job", help="an instance job whose predict stage has run (e.g. jobs/building_instances.yaml)")
    p.set_defaults(func=_cmd_bench_merge)
    p = bench.add_parser("pipeline", help="vectorize, evaluate and overviews of a synthetic survey mosaic, timed")
    p.add_argument("--size", type=int, default=4096, help="scene side in pixels (default: 4096)")
    p.add_argument("--workers", type=int, default=1, help="Ray tasks for evaluate's bands (default: 1, no Ray)")
    p.add_argument("--chunk", type=int, default=448, help="mosaic chunk side in pixels (default: 448)")
    p.add_argument("--out", help="keep the mosaic, reference and outputs here (default: a temporary folder)")
    p.add_argument("--simplify-m", type=float, default=0.0, help="vectorize.simplify_m of the vectorize steps")
    p.set_defaults(func=_cmd_bench_pipeline)
    p = bench.add_parser(
        "zoo",
        help="train, predict and score every semantic architecture on one job's data with the same budget; "
        "a markdown table (zoo.md) and one JSON row per architecture (zoo.jsonl), resumable",
    )
    p.add_argument("job", help="a semantic job whose data the zoo uses (e.g. jobs/flood_survey.yaml)")
    p.add_argument("--out", default="out/zoo", help="rows, table and each architecture's run (default: out/zoo)")
    p.add_argument("--archs", help="comma-separated architectures (default: every semantic one)")
    p.add_argument("--crf", help="comma-separated architectures also scored with the dense CRF (e.g. deeplabv2)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=25, help="steps per epoch")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, default=2048, help="score the central N x N window of the scene (0: all)")
    p.set_defaults(func=_cmd_bench_zoo)
