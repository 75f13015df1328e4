"""torchrun with 2 gloo processes on the CPU: the sharded gate equals the single-process
gate exactly; DDP training matches single-process training with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drift_gate.distributed import Dist
from gatekit import gate, gate_args


def torchrun(*argv: str, cwd: Path | None = None, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=N -m drift_gate …`` (one thread per process)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [*cmd, "-m", "drift_gate", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_shards_are_whole_batches_in_turn() -> None:
    shards = [Dist(r, 3).shard(23, 4) for r in range(3)]
    assert shards[0] == [0, 1, 2, 3, 12, 13, 14, 15]
    assert shards[1] == [4, 5, 6, 7, 16, 17, 18, 19]
    assert shards[2] == [8, 9, 10, 11, 20, 21, 22]
    assert sorted(i for s in shards for i in s) == list(range(23))
    assert Dist(1, 2).shard(3, 4) == [], "a rank may get nothing"


@pytest.mark.heavy  # two torchrun processes: about a minute on 2 cores (nox -s heavy)
def test_sharded_gate_equals_single_process(env: dict[str, Path]) -> None:
    assert gate(env, env["ft"], "--threads", "1", "--batch-size", "4") == 0
    single = json.loads((env["reports"] / "gate.json").read_text())
    env["reports"] = env["tmp"] / "reports-ddp"
    done = torchrun(*gate_args(env, env["ft"], "--threads", "1", "--batch-size", "4"))
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = json.loads((env["reports"] / "gate.json").read_text())
    assert done.stdout.count("verdict: PASS") == 1, "only rank 0 prints the result"
    (a,), (b,) = single["candidates"], sharded["candidates"]
    assert a["per_sample"] == b["per_sample"], "per-sample metrics must be identical"
    assert (a["verdict"], a["label"], a["auc"], a["rules"]) == (
        b["verdict"],
        b["label"],
        b["auc"],
        b["rules"],
    )
    assert a["summaries"] == b["summaries"] and a["selected"] == b["selected"]


@pytest.mark.heavy  # two torchrun processes: about a minute on 2 cores (nox -s heavy)
def test_sharded_gate_exit_codes(env: dict[str, Path]) -> None:
    env["thresholds"].write_text(env["thresholds"].read_text().replace("iou.min = 0.3", "iou.min = 0.999"))
    done = torchrun(*gate_args(env, env["ft"], "--threads", "1"))
    assert done.returncode == 1, done.stderr[-3000:]
    # torchrun reports any failed worker as exit 1; the workers themselves exit 2 here.
    missing = torchrun(*gate_args(env, env["tmp"] / "missing.pt", "--threads", "1"))
    assert missing.returncode == 1 and "checkpoint not found" in missing.stderr
    assert "exitcode  : 2" in missing.stderr


@pytest.mark.heavy  # two torchrun processes: about a minute on 2 cores (nox -s heavy)
def test_ddp_training_matches_single_process(tmp_path: Path, phantom_root: Path) -> None:
    import torch

    from drift_gate.models.checkpoint import load_checkpoint

    profile = (
        f'[t]\ndata = "{phantom_root}"\nbackbones = ["tiny"]\ninput_size = 32\nweights = "none"\n'
        f'batch_size = 8\ntl = {{ epochs = 3, lr = 1e-2 }}\nft = {{ epochs = 1, lr = 1e-3 }}\nout = "ck"\n'
    )
    runs = {}
    for name, seed in (("single", 0), ("ddp", 0)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "p.toml").write_text(profile.replace('out = "ck"', f'out = "ck"\nseed = {seed}'))
        argv = ["train", "--profile", "t", "--profiles", "p.toml", "--device", "cpu", "--no-progress"]
        argv += ["--threads", "1", "--cache-dir", str(folder / "cache")]
        if name == "ddp":
            done = torchrun(*argv, cwd=folder)
        else:
            done = subprocess.run(
                [sys.executable, "-m", "drift_gate", *argv],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=600,
            )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = {
            p: load_checkpoint(folder / "ck" / "tiny" / f"{p}.pt")[0].state_dict() for p in ("tl", "ft")
        }

    def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], params: bool = False) -> float:
        keys = [k for k in a if a[k].is_floating_point() and not (params and "running_" in k)]
        return max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)

    # TL: features computed batch by batch on both ranks, head trained identically.
    assert max_diff(runs["single"]["tl"], runs["ddp"]["tl"]) == 0.0
    # FT: gradients averaged over the same global batches, BatchNorm statistics over the
    # global batch (GlobalBatchNorm2d on the CPU): equal up to float rounding, far
    # below how far fine-tuning moved the weights.
    ddp = max_diff(runs["single"]["ft"], runs["ddp"]["ft"], params=True)
    moved = max_diff(runs["single"]["ft"], runs["single"]["tl"], params=True)
    assert ddp < 1e-5 and ddp < moved / 100, (ddp, moved)
