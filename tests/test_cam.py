"""CAM engine: equality with pytorch-grad-cam, frozen checkpoints, batching, targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drift_gate.data.datasets import ImageDataset
from drift_gate.errors import ConfigError
from drift_gate.evidence.cam import GRADIENT_METHODS, METHODS, CamEngine, compute_cams, minmax, upsample
from drift_gate.evidence.methods import METHODS as REGISTRY
from drift_gate.evidence.methods import Needs
from drift_gate.models.backbones import build_classifier

#: The methods pytorch-grad-cam has (Integrated Gradients is Captum's: tests/test_methods.py).
CAMS = tuple(m for m in METHODS if REGISTRY[m].needs is not Needs.INPUT)

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

REFERENCE = {
    "layercam": pytorch_grad_cam.LayerCAM,
    "gradcam++": pytorch_grad_cam.GradCAMPlusPlus,
    "gradcam": pytorch_grad_cam.GradCAM,
    "xgradcam": pytorch_grad_cam.XGradCAM,
    "hirescam": pytorch_grad_cam.HiResCAM,
    "ablationcam": pytorch_grad_cam.AblationCAM,
}


def reference_maps(model: torch.nn.Module, method: str, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam used as documented: one CAM object per method."""
    kwargs = {"batch_size": 64} if method == "ablationcam" else {}
    with REFERENCE[method](model=model, target_layers=[model.target_layer], **kwargs) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def assert_equal_to_reference(arch: str, size: int, n: int = 3, methods: tuple[str, ...] = CAMS) -> None:
    torch.manual_seed(0)
    model = build_classifier(arch, 5).eval()
    x = torch.randn(n, 3, size, size)
    targets = torch.tensor([0, 3, 4, 1])[:n]
    ours = CamEngine(model, methods)(x, targets)
    for method in methods:
        mine = minmax(upsample(ours.maps[method], size)).numpy()
        np.testing.assert_allclose(
            mine, reference_maps(model, method, x, targets), atol=1e-5, err_msg=f"{arch} {method}"
        )


def test_all_methods_equal_pytorch_grad_cam_on_tiny() -> None:
    assert_equal_to_reference("tiny", 32)


@pytest.mark.heavy
@pytest.mark.parametrize(("arch", "size"), [("densenet201", 96), ("resnet50v2", 96), ("inception_v3", 160)])
def test_all_methods_equal_pytorch_grad_cam_on_real_backbones(arch: str, size: int) -> None:
    """Small inputs with 3x3 maps (InceptionV3's unpadded stem needs 160 px for that; at
    96 px its map is 1x1, i.e. degenerate, and at 128 px a 2x2 map lets min-max
    normalisation amplify the reference's float32 rounding past 1e-5)."""
    assert_equal_to_reference(arch, size, n=2)


def test_every_reference_method_is_covered() -> None:
    assert set(REFERENCE) == set(CAMS)
    assert set(GRADIENT_METHODS) | {"ablationcam"} == set(CAMS)
    assert set(METHODS) - set(CAMS) == {"integrated_gradients"}


def test_frozen_parameters_work() -> None:
    """pytorch-grad-cam cannot backpropagate through a fully frozen model; the engine can."""
    torch.manual_seed(1)
    model = build_classifier("tiny", 5).eval()
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([1, 2])
    expected = CamEngine(model, ["layercam", "gradcam++"])(x, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = CamEngine(model, ["layercam", "gradcam++"])(x, targets)
    for m in expected.maps:
        torch.testing.assert_close(frozen.maps[m], expected.maps[m])
    assert all(p.grad is None for p in model.parameters()), "no parameter gradients are taken"


def test_one_body_forward_per_batch() -> None:
    model = build_classifier("tiny", 5).eval()
    calls = []
    model.body.register_forward_hook(lambda *a: calls.append(1))
    CamEngine(model, CAMS)(torch.randn(4, 3, 32, 32))
    assert len(calls) == 1


def test_batching_does_not_change_maps(phantom_data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(2)
    model = build_classifier("tiny", 5)
    ds = ImageDataset(phantom_data.split("test"), 32, (0.5,) * 3, (0.25,) * 3)
    whole = compute_cams(model, ds, ["layercam", "gradcam++"], batch_size=len(ds))
    small = compute_cams(model, ds, ["layercam", "gradcam++"], batch_size=3)
    assert whole.maps["layercam"].shape == (len(ds), 8, 8)
    for m in whole.maps:
        np.testing.assert_allclose(small.maps[m], whole.maps[m], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(whole.targets, ds.labels.numpy())
    predicted = compute_cams(model, ds, ["layercam"], target="predicted")
    np.testing.assert_array_equal(predicted.targets, whole.logits.argmax(1))


def test_maps_are_non_negative_and_target_specific() -> None:
    torch.manual_seed(3)
    model = build_classifier("tiny", 5).eval()
    x = torch.randn(1, 3, 32, 32)
    engine = CamEngine(model, ["hirescam"])
    a = engine(x, torch.tensor([0])).maps["hirescam"]
    b = engine(x, torch.tensor([1])).maps["hirescam"]
    assert float(a.min()) >= 0 and not torch.equal(a, b)


def test_unknown_method_and_target() -> None:
    model = build_classifier("tiny", 5)
    with pytest.raises(ConfigError, match=r"unknown CAM method.*'scorecam'.*known: layercam"):
        CamEngine(model, ["scorecam"])
    with pytest.raises(ConfigError, match="no CAM method"):
        CamEngine(model, [])
    with pytest.raises(ConfigError, match="unknown CAM target"):
        compute_cams(model, [], ["layercam"], target="other")  # type: ignore[arg-type]


def test_minmax_is_scale_free_and_handles_constants() -> None:
    maps = torch.tensor([[[0.0, 1e-4], [2e-4, 4e-4]], [[3.0, 3.0], [3.0, 3.0]]])
    out = minmax(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))


def test_upsample_matches_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    small = torch.rand(1, 5, 5)
    np.testing.assert_allclose(
        upsample(small, 40)[0].numpy(), cv2.resize(small[0].numpy(), (40, 40)), atol=1e-6
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_give_the_same_maps() -> None:
    torch.manual_seed(4)
    model = build_classifier("tiny", 5).eval()
    x = torch.randn(2, 3, 32, 32)
    cpu = CamEngine(model, METHODS)(x)
    gpu = CamEngine(model.cuda(), METHODS)(x.cuda())
    for m in METHODS:
        # Ablation-CAM's weights are (score - ablated score) / score: the cancellation
        # magnifies float32 rounding (1.3e-5 measured on an H100, 4e-7 for LayerCAM).
        atol = 1e-4 if m == "ablationcam" else 1e-5
        torch.testing.assert_close(minmax(gpu.maps[m].cpu()), minmax(cpu.maps[m]), atol=atol, rtol=0)


def test_fp32_cams_do_not_run_in_tf32() -> None:
    """On Ampere and newer GPUs cuDNN convolutions default to TF32, which moved the
    activations of ResNet50V2 by 1.8e-3 (relative) from the CPU's on an H100; the
    engine turns it off for fp32 and restores the flags after."""
    from drift_gate.evidence.cam import _no_tf32

    before = torch.backends.cudnn.allow_tf32
    with _no_tf32("fp32"):
        assert not torch.backends.cudnn.allow_tf32 or not torch.cuda.is_available()
    with _no_tf32("bf16"):
        assert torch.backends.cudnn.allow_tf32 == before
    assert torch.backends.cudnn.allow_tf32 == before
