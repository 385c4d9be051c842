"""GPU path (bf16 autocast, channels_last): run with `pytest -m gpu` on a CUDA machine."""

import numpy as np
import pytest
import torch

from geoseg.infer import TilePredictor
from geoseg.io.mosaic import create_mosaic, open_mosaic
from geoseg.io.raster import inspect_scene
from geoseg.tiling import plan_tiles
from tests.factories import tiny_unet_checkpoint

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


def test_gpu_prediction_agrees_with_cpu_and_is_deterministic(tmp_path, make_geotiff):
    data = np.random.default_rng(0).integers(1, 255, (3, 400, 350), dtype=np.uint8)
    path = make_geotiff("s.tif", data)
    scene = inspect_scene(path)
    checkpoint = tiny_unet_checkpoint(tmp_path / "ckpt", scene)
    tiles = plan_tiles(400, 350, tile_size=192, halo=32)
    labels = {}
    for name, device, batch in (("cpu", "cpu", 4), ("gpu1", "cuda", 1), ("gpu8", "cuda", 8)):
        mosaic = tmp_path / f"{name}.zarr"
        create_mosaic(
            mosaic,
            height=400,
            width=350,
            chunk=128,
            crs=scene.crs,
            transform=scene.transform,
            class_names=["background", "water", "building"],
        )
        predictor = TilePredictor(checkpoint, path, mosaic, device=device, threads=2)
        for start in range(0, len(tiles), batch):
            predictor(tiles[start : start + batch])
        labels[name] = open_mosaic(mosaic).labels[:]
    assert (labels["gpu1"] == labels["gpu8"]).all()  # deterministic kernels, whatever the batch size
    assert (labels["gpu1"] == labels["cpu"]).mean() > 0.97  # bf16 vs float32: near ties may flip


def test_gpu_benchmark_reports_a_cuda_device(tmp_path):
    from geoseg.bench.predict import bench_predict

    result = bench_predict(
        size=1024, tile_size=256, halo=32, batch_size=8, use_gpu=True, workdir=tmp_path, log=lambda message: None
    )
    assert result["device"].startswith("cuda") and result["efficiency"] > 0


def test_mask_rcnn_resnet50_trains_and_detects_on_the_gpu():
    """The GPU recipe: torchvision's ResNet-50-FPN Mask R-CNN, a bf16 training step and a detection pass."""
    from geoseg.infer.detect import run_detector
    from geoseg.models import build_model

    torch.manual_seed(0)
    model = build_model("maskrcnn_resnet50_fpn", in_channels=3, num_classes=2).cuda().train()
    masks = torch.zeros(1, 256, 256, dtype=torch.uint8, device="cuda")
    masks[0, 40:90, 60:140] = 1
    target = {
        "boxes": torch.tensor([[60.0, 40.0, 140.0, 90.0]], device="cuda"),
        "labels": torch.tensor([1], device="cuda"),
        "masks": masks,
    }
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = sum(model([torch.randn(3, 256, 256, device="cuda")], [target]).values())
    loss.float().backward()
    assert torch.isfinite(loss)
    model.eval()
    outputs = run_detector(
        model, np.random.default_rng(0).standard_normal((2, 3, 512, 512)).astype(np.float32), torch.device("cuda")
    )
    assert len(outputs) == 2 and all(o["masks"].shape[-2:] == (512, 512) for o in outputs if len(o["masks"]))
