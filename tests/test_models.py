"""Gate any model: specs, adapters, target layers, the engine against pytorch-grad-cam,
and baseline -> gate -> verdict for each model family (random init, small sizes)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from drift_gate.cli import main
from drift_gate.errors import ConfigError
from drift_gate.evidence.cam import METHODS, CamEngine, minmax, upsample
from drift_gate.evidence.methods import METHODS as REGISTRY
from drift_gate.evidence.methods import Needs
from drift_gate.gating.stored import load_baseline
from drift_gate.models.adapters import ForeignModel
from drift_gate.models.layers import find_layer
from drift_gate.models.spec import ModelSpec, load_spec
from gatekit import assert_error, multilabel_manifest, tree_digest

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from test_cam import REFERENCE  # noqa: E402  (one map of method -> pytorch-grad-cam class)

GRADIENT = tuple(m for m in METHODS if REGISTRY[m].needs is Needs.GRADIENT)
CLASSES = ["normal", "bacterial_pneumonia", "viral_pneumonia", "covid19", "tuberculosis"]


def _xrv() -> nn.Module:
    xrv = pytest.importorskip("torchxrayvision")
    return xrv.models.DenseNet(num_classes=5, in_channels=1)  # type: ignore[no-any-return]


def _swin() -> nn.Module:
    # a small Swin (4x4 windows at 128 px): channels-last stages, as the full-size ones
    return timm.create_model(  # type: ignore[no-any-return]
        "swin_tiny_patch4_window7_224",
        num_classes=5,
        img_size=128,
        window_size=4,
        embed_dim=24,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 2, 2),
    )


def _vit_tokens(t: torch.Tensor) -> torch.Tensor:
    side = int((t.shape[1] - 1) ** 0.5)
    return t[:, 1:, :].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)


#: family -> (builder, target layer, input size, channels, methods, grad-cam reshape)
CASES: dict[str, tuple[Callable[[], nn.Module], str, int, int, tuple[str, ...], object]] = {
    "torchvision-resnet18": (
        lambda: torchvision.models.resnet18(num_classes=5),
        "layer4",
        64,
        3,
        GRADIENT,
        None,
    ),
    # Ablation-CAM reruns the whole network once per channel on both sides: at layer2 (128
    # channels, post-ReLU, a 4x4 grid at 32 px) that is 1/16 of layer4's cost at 64 px.
    "torchvision-resnet18-ablation": (
        lambda: torchvision.models.resnet18(num_classes=5),
        "layer2",
        32,
        3,
        ("ablationcam",),
        None,
    ),
    "torchvision-densenet121": (
        lambda: torchvision.models.densenet121(num_classes=5),
        "features.denseblock4",
        64,
        3,
        GRADIENT,
        None,
    ),
    "timm-convnext_nano": (
        lambda: timm.create_model("convnext_nano", num_classes=5),
        "stages.3",
        64,
        3,
        GRADIENT,
        None,
    ),
    "timm-vit_tiny": (
        lambda: timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=64),
        "blocks.11.norm1",
        64,
        3,
        GRADIENT,
        _vit_tokens,
    ),
    "timm-swin": (_swin, "layers.3", 128, 3, GRADIENT, lambda t: t.permute(0, 3, 1, 2)),
    "xrv-densenet121": (_xrv, "features.denseblock4", 64, 1, GRADIENT, None),
}


@pytest.mark.parametrize("family", list(CASES))
def test_every_method_equals_pytorch_grad_cam(family: str) -> None:
    """Ablation-CAM is compared where the target is post-ReLU: drift-gate zeroes a channel
    (Desai & Ramaswamy), pytorch-grad-cam sets it to min - 1e7, the same only after a ReLU.

    Both run in float64: at these small grids and random weights, float32 rounding in the
    reference alone moves min-max normalised maps by more than 1e-5 (up to 1e-2 for the
    Swin, whose maps are of order 1e-7 with heavy cancellation over channels); the float32
    path of the engine is compared on drift-gate's own backbones in test_cam.py."""
    build, path, size, channels, methods, reshape = CASES[family]
    torch.manual_seed(0)
    net = build().eval()
    dtype = torch.float64
    net = net.to(dtype)
    spec = ModelSpec(
        arch="python:m:f",
        classes=tuple(CLASSES),
        input_size=size,
        channels=channels,
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
    )
    model = ForeignModel(net, spec, find_layer(net, path, size, channels))
    x = torch.randn(2, channels, size, size, dtype=dtype)
    targets = torch.tensor([0, 3])
    gradient = [m for m in methods if m != "ablationcam"]
    ours = CamEngine(model, gradient)(x, targets).maps if gradient else {}
    if "ablationcam" in methods:
        # one image: both sides rerun the whole network once per channel (128 here)
        x_one, t_one = x[:1], targets[:1]
        ours["ablationcam"] = CamEngine(model, ["ablationcam"])(x_one, t_one).maps["ablationcam"]
    for method in methods:
        mine = minmax(upsample(ours[method], size)).numpy()
        xs, ts = (x[:1], targets[:1]) if method == "ablationcam" else (x, targets)
        kwargs: dict[str, object] = {"batch_size": 64} if method == "ablationcam" else {}
        if reshape is not None:
            kwargs["reshape_transform"] = reshape
        with REFERENCE[method](model=net, target_layers=[net.get_submodule(path)], **kwargs) as cam:
            ref = cam(input_tensor=xs, targets=[ClassifierOutputTarget(int(t)) for t in ts])
        np.testing.assert_allclose(mine, ref, atol=1e-5, err_msg=f"{family} {method}")


@pytest.mark.parametrize(
    ("build", "size", "want"),
    [
        (lambda: torchvision.models.densenet121(num_classes=3), 64, "features.denseblock4"),
        (
            lambda: timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=64),
            64,
            "blocks.11.norm1",
        ),
        (_swin, 128, "norm"),
        (lambda: timm.create_model("convnext_nano", num_classes=3), 64, "stages.3"),
    ],
)
def test_auto_finds_the_last_spatial_activation_that_reaches_the_output(
    build: Callable[[], nn.Module], size: int, want: str
) -> None:
    """DenseNet's features/norm5 are overwritten by an in-place ReLU, a ViT's last patch
    tokens get no gradient (only the class token is classified), Swin is channels-last."""
    torch.manual_seed(0)
    assert find_layer(build(), "auto", size, 3).path == want


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("layer5", r"not a module of this model; nearest module paths: layer4"),
        ("avgpool", r"gives \(2, 512, 1, 1\), not a spatial activation"),
        ("fc", r"not a spatial activation"),
        ("layer4.1.relu", r"runs 2 times per forward pass"),
    ],
)
def test_bad_target_layers_are_named(path: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        find_layer(torchvision.models.resnet18(num_classes=3), path, 64, 3)


def test_an_in_place_overwrite_of_the_target_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'features': an in-place operation overwrites its output"):
        find_layer(torchvision.models.densenet121(num_classes=3), "features", 64, 3)


def test_a_layer_without_gradient_is_refused_by_the_engine() -> None:
    net = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=64).eval()
    spec = ModelSpec(arch="timm:vit_tiny_patch16_224", classes=("a", "b", "c"), input_size=64)
    model = ForeignModel(net, spec, find_layer(net, "norm", 64, 3))
    with pytest.raises(ConfigError, match=r"'norm': the outputs send no gradient to it.*blocks.<last>.norm1"):
        CamEngine(model)(torch.randn(2, 3, 64, 64))


def test_the_engine_leaves_the_models_parameters_as_they_were() -> None:
    net = torchvision.models.resnet18(num_classes=3)
    net.fc.weight.requires_grad_(False)
    spec = ModelSpec(arch="torchvision:resnet18", classes=("a", "b", "c"), input_size=64)
    CamEngine(ForeignModel(net, spec, find_layer(net, "layer4", 64, 3)))(torch.randn(2, 3, 64, 64))
    assert [p.requires_grad for p in net.parameters()][-2:] == [False, True]
    assert all(p.grad is None for p in net.parameters())


# --- end to end through the command line ---------------------------------------------------

RULES = """
[gate]
methods = ["layercam", "gradcam++"]
samples = "all"
min_samples = 2
[auc]
min_support = 1
min = 0.0
[drift]
iou.min = 0.3
[drift.{name}]
correlation.min = 0.5
"""


def _spec(tmp: Path, arch: str, **fields: object) -> Path:
    body = {"arch": arch, "classes": CLASSES, "input_size": 64, **fields}
    lines = ["[model]"] + [f"{k} = {json.dumps(v)}" for k, v in body.items() if not isinstance(v, dict)]
    for k, v in body.items():
        if isinstance(v, dict):
            lines += [f"[model.{k}]"] + [f"{kk} = {json.dumps(vv)}" for kk, vv in v.items()]
    path = tmp / "model.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _weights(tmp: Path, net: nn.Module, name: str, noise: float = 0.0) -> Path:
    torch.manual_seed(1)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if noise:
        state = {k: v + noise * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    path = tmp / name
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _run(tmp: Path, phantom_root: Path, spec: Path, *args: str) -> int:
    name = load_spec(spec).name
    rules = tmp / "thresholds.toml"
    if not rules.exists():
        rules.write_text(RULES.format(name=name))
    common = ["--data", str(phantom_root), "--thresholds", str(rules), "--device", "cpu", "--no-progress"]
    return main([*args, "--model", str(spec), *common])


def _baseline_then_gate(
    tmp: Path, phantom_root: Path, spec: Path, ref: Path, cand: Path
) -> dict[str, object]:
    base = tmp / "baselines"
    name = load_spec(spec).name
    assert (
        _run(
            tmp,
            phantom_root,
            spec,
            "baseline",
            "--reference",
            str(ref),
            "--out",
            str(base / name),
            "--per-class",
            "2",
        )
        == 0
    )
    code = _run(
        tmp,
        phantom_root,
        spec,
        "gate",
        "--candidate",
        str(cand),
        "--baselines",
        str(base),
        "--reports",
        str(tmp / "reports"),
    )
    doc = json.loads((tmp / "reports" / "gate.json").read_text())
    assert code == doc["exit_code"] == 0, doc["candidates"][0]["rules"]
    return doc  # type: ignore[no-any-return]


def _hf_folder(tmp: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=64,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    folder = tmp / "hf-vit"
    torch.manual_seed(0)
    transformers.AutoModelForImageClassification.from_config(config).save_pretrained(folder)
    return folder


def test_torchvision_state_dict_end_to_end(tmp_path: Path, phantom_root: Path) -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=5)
    spec = _spec(tmp_path, "torchvision:resnet18")
    doc = _baseline_then_gate(
        tmp_path,
        phantom_root,
        spec,
        _weights(tmp_path, net, "ref.pt"),
        _weights(tmp_path, net, "ft.pth", 1e-4),
    )
    cand = doc["candidates"][0]  # type: ignore[index]
    assert cand["arch"] == "torchvision-resnet18"
    assert {r["rule"] for r in cand["rules"]} >= {"torchvision-resnet18/layercam/correlation.min"}
    stored = json.loads((tmp_path / "baselines" / "torchvision-resnet18" / "baseline.json").read_text())
    assert stored["model"]["arch"] == "torchvision:resnet18" and stored["maps"]["layer"] == "layer4.1"


def test_timm_vit_safetensors_end_to_end(tmp_path: Path, phantom_root: Path) -> None:
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=64, depth=2)
    spec = _spec(tmp_path, "timm:vit_tiny_patch16_224", target_layer="blocks.1.norm1", kwargs={"depth": 2})
    _baseline_then_gate(
        tmp_path,
        phantom_root,
        spec,
        _weights(tmp_path, net, "ref.safetensors"),
        _weights(tmp_path, net, "ft.safetensors", 1e-4),
    )


def test_hugging_face_folder_end_to_end(
    tmp_path: Path, phantom_root: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = _hf_folder(tmp_path)
    capfd.readouterr()  # what saving the folder printed
    spec = _spec(tmp_path, f"hf:{folder}", name="hf-vit", mean=[0.5] * 3, std=[0.5] * 3)
    assert load_spec(spec).name == "hf-vit"
    doc = _baseline_then_gate(
        tmp_path, phantom_root, spec, folder / "model.safetensors", folder / "model.safetensors"
    )
    stored = json.loads((tmp_path / "baselines" / "hf-vit" / "baseline.json").read_text())
    assert stored["maps"]["layer"] == "vit.layers.1.layernorm_before"
    assert doc["candidates"][0]["verdict"] == "pass"  # type: ignore[index]
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "%|" not in err, err  # transformers' bar is not ours


def test_torchxrayvision_one_channel_end_to_end(tmp_path: Path, phantom_root: Path) -> None:
    torch.manual_seed(0)
    net = _xrv()
    spec = _spec(tmp_path, "xrv:densenet121", channels=1, mean=[0.5], std=[1 / 2048])
    _baseline_then_gate(
        tmp_path,
        phantom_root,
        spec,
        _weights(tmp_path, net, "ref.pt"),
        _weights(tmp_path, net, "ft.pt", 1e-4),
    )


def test_own_class_end_to_end(tmp_path: Path, phantom_root: Path) -> None:
    from user_model import small_net

    torch.manual_seed(0)
    spec = _spec(tmp_path, "python:user_model:small_net", kwargs={"outputs": 5})
    net = small_net(5)
    doc = _baseline_then_gate(
        tmp_path,
        phantom_root,
        spec,
        _weights(tmp_path, net, "ref.pt"),
        _weights(tmp_path, net, "ft.pt", 1e-3),
    )
    assert doc["candidates"][0]["arch"] == "python-small_net"  # type: ignore[index]


# --- bad specs and candidates: exit 2, one line, nothing written -----------------------------


@pytest.fixture()
def made(tmp_path: Path, phantom_root: Path) -> dict[str, Path]:
    """A resnet18 baseline made from a state dict, and a candidate."""
    from user_model import small_net

    torch.manual_seed(0)
    net = small_net(5)
    spec = _spec(tmp_path, "python:user_model:small_net", kwargs={"outputs": 5})
    ref = _weights(tmp_path, net, "ref.pt")
    base = tmp_path / "baselines"
    assert (
        _run(
            tmp_path,
            phantom_root,
            spec,
            "baseline",
            "--reference",
            str(ref),
            "--out",
            str(base / "python-small_net"),
            "--per-class",
            "2",
        )
        == 0
    )
    return {"spec": spec, "ref": ref, "baselines": base, "tmp": tmp_path, "data": phantom_root}


def _gate_with(made: dict[str, Path], spec_text: str | None, candidate: Path | None = None) -> int:
    tmp = made["tmp"]
    spec = made["spec"]
    if spec_text is not None:
        spec = tmp / "other.toml"
        spec.write_text(spec_text)
    before = tree_digest(made["baselines"])
    args = [
        "gate",
        "--candidate",
        str(candidate or made["ref"]),
        "--baselines",
        str(made["baselines"]),
        "--reports",
        str(tmp / "reports"),
        "--data",
        str(made["data"]),
        "--thresholds",
        str(tmp / "thresholds.toml"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    if spec_text != "":
        args += ["--model", str(spec)]
    code = main(args)
    assert tree_digest(made["baselines"]) == before
    assert not (tmp / "reports").exists()
    return code


SPEC = 'arch = "python:user_model:small_net"\nclasses = {classes}\ninput_size = 64\n'


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ('[model]\narch = "keras:resnet"\nclasses = ["a", "b"]\n', r"model.arch: unknown family 'keras'"),
        (
            '[model]\narch = "timm:resnet_9000"\nclasses = ["a", "b"]\n',
            r"timm:resnet_9000: unknown timm model",
        ),
        (
            "[model]\n"
            + SPEC.format(classes=json.dumps(CLASSES))
            + 'target_layer = "stage.5"\n[model.kwargs]\noutputs = 5\n',
            r"target layer 'stage.5' is not a module of this model; nearest module paths: stage",
        ),
        (
            "[model]\n"
            + SPEC.format(classes=json.dumps(CLASSES))
            + 'target_layer = "head"\n[model.kwargs]\noutputs = 5\n',
            r"target layer 'head' gives \(2, 5\), not a spatial activation",
        ),
        (
            "[model]\n" + SPEC.format(classes=json.dumps(CLASSES)) + "[model.kwargs]\noutputs = 3\n",
            r"the weights do not fit python:user_model:small_net with 5 classes: "
            r"size mismatch for head.weight",
        ),
        (
            "[model]\n"
            + SPEC.format(classes=json.dumps(CLASSES))
            + "[model.kwargs]\noutputs = 5\nchannels = 3\n",
            r"does not match the baseline .*model.kwargs",
        ),
        (
            '[model]\nname = "python-small_net"\n'
            + SPEC.format(classes=json.dumps(CLASSES)).replace("small_net", "small_net_v2")
            + "[model.kwargs]\noutputs = 5\n",
            r"python-small_net is the baseline of another model \('python:user_model:small_net', "
            r"this one is 'python:user_model:small_net_v2'\); give this model a baseline name",
        ),
        (
            '[model]\narch = "python:user_model:not_a_module"\nclasses = ["a", "b"]\n',
            r"the factory returned str, not an nn.Module",
        ),
        (
            '[model]\narch = "python:no_such_module:f"\nclasses = ["a", "b"]\n',
            r"cannot import 'no_such_module'",
        ),
        (
            '[model]\narch = "torchvision:resnet18"\nclasses = ["a", "b"]\nsize = 3\n',
            r"unknown model key\(s\) size",
        ),
    ],
    ids=[
        "family",
        "timm-name",
        "unknown-layer",
        "non-spatial-layer",
        "class-count",
        "spec-differs",
        "another-model",
        "factory-returns",
        "factory-import",
        "unknown-key",
    ],
)
def test_bad_specs_exit_2_with_one_line(
    made: dict[str, Path], capsys: pytest.CaptureFixture[str], spec: str, pattern: str
) -> None:
    assert_error(_gate_with(made, spec), capsys, pattern)


def test_a_state_dict_without_spec_says_to_give_one(
    made: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_error(
        _gate_with(made, ""),
        capsys,
        r"ref.pt: not a drift-gate checkpoint; a plain state dict needs its model spec",
    )


def test_a_pickled_module_and_torchscript_are_refused_with_how_to_save(
    made: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from user_model import small_net

    pickled = made["tmp"] / "whole.pt"
    torch.save(small_net(5), pickled)
    assert_error(
        _gate_with(made, None, pickled),
        capsys,
        r"whole pickled model.*refused. Save torch.save\(model.state_dict",
    )
    scripted = made["tmp"] / "scripted.pt"
    with warnings.catch_warnings():  # torch.jit.script is deprecated, and still what teams have
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(small_net(5)), str(scripted))
    assert_error(_gate_with(made, None, scripted), capsys, r"a TorchScript module: hooks do not fire")


def test_a_spec_with_a_drift_gate_checkpoint_is_refused(
    made: dict[str, Path], trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_error(
        _gate_with(made, None, trained / "ft.pt"), capsys, r"carries its own model description; drop --model"
    )


# --- multi-label heads ----------------------------------------------------------------------

FINDINGS = ["Effusion", "Nodule", "Pneumonia"]


def _nih_manifest(tmp: Path, phantom_root: Path) -> Path:
    """A multi-label manifest beside the phantom images (inside the data root)."""
    return multilabel_manifest(phantom_root, phantom_root / f"nih-{tmp.name}.csv")


def test_multilabel_torchxrayvision_end_to_end(tmp_path: Path, phantom_root: Path) -> None:
    torch.manual_seed(0)
    net = _xrv_n(len(FINDINGS))
    spec = tmp_path / "model.toml"
    spec.write_text(
        '[model]\narch = "xrv:densenet121"\nname = "xrv-chest"\ntask = "multilabel"\n'
        f"classes = {json.dumps(FINDINGS)}\ninput_size = 64\nchannels = 1\nmean = [0.5]\n"
        "std = [0.00048828125]\noperating_point = [0.5, 0.4, 0.6]\n"
    )
    manifest = _nih_manifest(tmp_path, phantom_root)
    rules = tmp_path / "thresholds.toml"
    rules.write_text(RULES.format(name="xrv-chest") + "[drift.xrv-chest.labels.Nodule]\niou.min = 0.2\n")
    base = tmp_path / "baselines"
    common = [
        "--model",
        str(spec),
        "--data",
        str(manifest),
        "--thresholds",
        str(rules),
        "--device",
        "cpu",
        "--no-progress",
    ]
    ref, cand = _weights(tmp_path, net, "ref.pt"), _weights(tmp_path, net, "ft.pt", 1e-4)
    assert (
        main(
            [
                "baseline",
                "--reference",
                str(ref),
                "--per-class",
                "2",
                "--out",
                str(base / "xrv-chest"),
                *common,
            ]
        )
        == 0
    )
    stored = json.loads((base / "xrv-chest" / "baseline.json").read_text())
    pairs = stored["audit"]["pairs"]
    per_class = stored["audit"]["pairs_per_class"]
    assert sum(per_class.values()) == pairs and set(per_class) == set(FINDINGS)
    assert all(1 <= k <= 2 for k in per_class.values()), per_class
    assert (
        main(
            [
                "gate",
                "--candidate",
                str(cand),
                "--baselines",
                str(base),
                "--reports",
                str(tmp_path / "reports"),
                *common,
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "reports" / "gate.json").read_text())["candidates"][0]
    assert doc["n_audit"] == pairs and len(doc["sample_ids"]) == pairs
    assert any(i.endswith("[Nodule]") for i in doc["sample_ids"])
    # per-label summaries: one group per finding, beside the overall one
    assert set(doc["summaries"]["layercam"]["iou"]) == {"overall", "newly_correct", *FINDINGS}
    # and a rule on one label's maps
    nodule = {r["rule"]: r for r in doc["rules"]}["xrv-chest/layercam/Nodule/iou.min"]
    assert nodule["status"] == "pass" and nodule["source"].endswith("thresholds.toml:14")
    assert 0.0 <= doc["auc"] <= 1.0


def test_multilabel_paired_counterfactual_pairs_each_finding(tmp_path: Path, phantom_root: Path) -> None:
    """``[counterfactual] paired`` on a multi-label head: the baseline stores one reference
    drop per (image, finding) pair, by the gate's own donors (another image's) and
    sigmoid scores, so the reference gated against itself adds exactly nothing."""
    torch.manual_seed(0)
    spec = tmp_path / "model.toml"
    spec.write_text(
        '[model]\narch = "xrv:densenet121"\nname = "xrv-chest"\ntask = "multilabel"\n'
        f"classes = {json.dumps(FINDINGS)}\ninput_size = 64\nchannels = 1\nmean = [0.5]\nstd = [0.25]\n"
    )
    rules = tmp_path / "thresholds.toml"
    rules.write_text(
        RULES.format(name="xrv-chest").replace('"layercam", "gradcam++"', '"layercam"')
        + "[counterfactual]\nregion = 'band'\nborder = 0.3\nmax_score_drop = 0.0\npaired = true\n"
    )
    common = ["--model", str(spec), "--data", str(_nih_manifest(tmp_path, phantom_root))]
    common += ["--thresholds", str(rules), "--device", "cpu", "--no-progress"]
    ref = _weights(tmp_path, _xrv_n(len(FINDINGS)), "ref.pt")
    base = tmp_path / "baselines"
    made = ["baseline", "--reference", str(ref), "--per-class", "2", "--out", str(base / "xrv-chest")]
    assert main([*made, *common]) == 0
    stored = load_baseline(base / "xrv-chest")
    assert stored.pairs is not None and stored.drops["counterfactual_drop"].shape == (len(stored.pairs),)
    assert np.abs(stored.drops["counterfactual_drop"]).max() > 0, "the reference's own drops are not 0"
    reports = tmp_path / "reports"
    assert (
        main(["gate", "--candidate", str(ref), "--baselines", str(base), "--reports", str(reports), *common])
        == 0
    )
    doc = json.loads((reports / "gate.json").read_text())["candidates"][0]
    assert doc["per_sample"]["layercam"]["counterfactual_drop"] == [0.0] * len(stored.pairs)


def _xrv_n(n: int) -> nn.Module:
    xrv = pytest.importorskip("torchxrayvision")
    return xrv.models.DenseNet(num_classes=n, in_channels=1)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ('arch = "timm:x"\nclasses = ["a", "b", "c"]\ntask = "binary"', r"a binary task has two classes"),
        (
            'arch = "timm:x"\nclasses = ["a", "b"]\nchannels = 1\nmean = [0.5, 0.5]',
            r"model.mean: expected 1 values",
        ),
        (
            'arch = "timm:x"\nclasses = ["a", "b"]\noperating_point = 1.5',
            r"model.operating_point: expected one",
        ),
        ('arch = "timm:x"\nclasses = ["a", "a"]', r"class names must be unique"),
        ('arch = "timm:x"\nclasses = ["a", "b"]\nname = "../up"', r"model.name: expected 1-64 letters"),
        ('arch = "python:mod"\nclasses = ["a", "b"]', r"expected 'python:<module>:<factory>'"),
        ('classes = ["a", "b"]', r"model.arch: missing"),
    ],
)
def test_spec_errors_name_the_key(tmp_path: Path, body: str, pattern: str) -> None:
    path = tmp_path / "model.toml"
    path.write_text("[model]\n" + body + "\n")
    with pytest.raises(ConfigError, match=pattern):
        load_spec(path)


def test_a_spec_round_trips_through_its_stored_form() -> None:
    spec = ModelSpec.from_dict(
        {
            "arch": "xrv:densenet121",
            "classes": ["A", "B"],
            "task": "multilabel",
            "channels": 1,
            "operating_point": [0.3, 0.7],
        },
        "here",
    )
    assert spec.name == "xrv-densenet121" and spec.mean == (0.5,) and spec.threshold(1) == 0.7
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.as_dict())), "stored") == spec


def test_per_class_bounds_are_absolute_and_must_name_a_class(
    made: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rules = made["tmp"] / "thresholds.toml"
    text = rules.read_text()
    rules.write_text(text + "[drift.python-small_net.labels.covid19]\niou.max_drop = 0.1\n")
    assert_error(_gate_with(made, None), capsys, r"thresholds.toml:\d+: .*per-class bounds are absolute")
    rules.write_text(text + "[drift.python-small_net.labels.Covid]\niou.min = 0.1\n")
    assert_error(_gate_with(made, None), capsys, r"labels.Covid: 'Covid' is not one of the model's classes")


def test_export_gate_with_onnx_and_approve_a_state_dict(made: dict[str, Path]) -> None:
    """Everything downstream of the gate works for a model given by a spec: the ONNX export
    (checked for parity), predictions from ONNX Runtime in the gate, and approval."""
    tmp = made["tmp"]
    common = ["--model", str(made["spec"]), "--data", str(made["data"]), "--device", "cpu", "--no-progress"]
    assert (
        main(["export", "--checkpoint", str(made["ref"]), "--baselines", str(made["baselines"]), *common])
        == 0
    )
    assert made["ref"].with_suffix(".onnx").is_file()
    assert (
        main(
            [
                "gate",
                "--candidate",
                str(made["ref"]),
                "--baselines",
                str(made["baselines"]),
                "--reports",
                str(tmp / "reports"),
                "--thresholds",
                str(tmp / "thresholds.toml"),
                *common,
            ]
        )
        == 0
    )
    doc = json.loads((tmp / "reports" / "gate.json").read_text())["candidates"][0]
    assert doc["predictions"].startswith("onnxruntime") and doc["onnx"]["max_rel_diff"] < 1e-4
    assert main(["approve", "--result", str(tmp / "reports" / "gate.json")]) == 0
    stored = json.loads((made["baselines"] / "python-small_net" / "baseline.json").read_text())
    assert stored["approved"]["candidate_sha256"] == doc["candidate_sha256"]


@pytest.mark.parametrize("outputs", [1, 2])
def test_binary_heads_with_one_or_two_logits(tmp_path: Path, phantom_root: Path, outputs: int) -> None:
    """A single logit ``z`` is read as the logits ``(-z, z)``: the negative class is explained
    by ``-z``, and the gate runs as for a two-logit head."""
    import csv

    from user_model import small_net

    with (phantom_root / "manifest.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] in ("normal", "covid19")]
    manifest = phantom_root / f"binary-{tmp_path.name}.csv"  # beside the images: inside the data root
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows({"path": r["path"], "label": r["label"], "split": r["split"]} for r in rows)
    spec = tmp_path / "model.toml"
    spec.write_text(
        '[model]\narch = "python:user_model:small_net"\ntask = "binary"\nclasses = ["normal", "covid19"]\n'
        f"input_size = 64\n[model.kwargs]\noutputs = {outputs}\n"
    )
    torch.manual_seed(0)
    net = small_net(outputs)
    ref, cand = _weights(tmp_path, net, "ref.pt"), _weights(tmp_path, net, "ft.pt", 1e-3)
    rules = tmp_path / "thresholds.toml"
    rules.write_text(RULES.format(name="python-small_net"))
    common = [
        "--model",
        str(spec),
        "--data",
        str(manifest),
        "--thresholds",
        str(rules),
        "--device",
        "cpu",
        "--no-progress",
    ]
    base = tmp_path / "baselines"
    assert (
        main(
            [
                "baseline",
                "--reference",
                str(ref),
                "--out",
                str(base / "python-small_net"),
                "--per-class",
                "2",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "gate",
                "--candidate",
                str(cand),
                "--baselines",
                str(base),
                "--reports",
                str(tmp_path / "r"),
                *common,
            ]
        )
        == 0
    )
    logits = np.load(base / "python-small_net" / "maps.npz")["logits"]
    assert logits.shape[1] == 2
    if outputs == 1:
        np.testing.assert_allclose(logits[:, 0], -logits[:, 1])
