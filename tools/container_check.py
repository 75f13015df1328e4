"""Builds the drift-gate image from the Dockerfile and runs it for real (`nox -s container`).

On a machine without a container registry (like the development machines) it
makes everything it needs locally, as root:

1. installs Debian's ``docker.io`` (and ``debootstrap``) when ``dockerd`` is missing;
2. starts its own ``dockerd`` (data root under ``~/.cache/drift-gate/docker``, out
   of the repository; no iptables rules, no bridge) and stops it by PID at the end;
3. makes the base image ``local/python:3.11-slim`` once, from Debian packages
   (``debootstrap`` + ``docker import``), trusting the host's extra CA certificates;
4. serves local torch wheels to the build over 127.0.0.1 when the machine has them
   (``--wheels``), and passes the host's extra CA certificates as ``EXTRA_CA_CERTS``;
5. builds the image, then runs ``docker run … --candidate …`` on a trained candidate
   and checks that the exit code and the report match the gate run on the host, that
   a stricter mounted ``thresholds.toml`` fails it (exit 1), and that a missing
   candidate is a usage error (exit 2).

Prints the build time and the image size. With a registry, none of this is needed:
``docker build -t drift-gate .`` (see the README).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "local/python:3.11-slim"
IMAGE = "drift-gate:local"
STRICT = """[gate]
methods = ["layercam", "gradcam++"]
samples = "all"
min_samples = 2
[drift]
iou.min = 0.999
"""


def log(message: str) -> None:
    print(f"[container] {message}", file=sys.stderr, flush=True)


def run(*cmd: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def ensure_packages() -> None:
    missing = [
        pkg
        for pkg, exe in (("docker.io", "dockerd"), ("debootstrap", "debootstrap"))
        if not shutil.which(exe)
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"[container] needs {', '.join(missing)} (apt-get install) and root to start dockerd")
    log(f"installing {' '.join(missing)} from Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if run("apt-get", "install", "-y", "-q", *missing, check=False, env=env).returncode != 0:
        run("apt-get", "update", "-q", env=env)
        run("apt-get", "install", "-y", "-q", *missing, env=env)


def docker_client() -> str:
    """Debian's 20.10 client builds with BuildKit itself; a newer client first on the
    PATH may lack the buildx plugin it would need."""
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


@contextlib.contextmanager
def dockerd(state: Path) -> Iterator[list[str]]:
    """A private dockerd; yields the client command prefix; stops it by PID."""
    state.mkdir(parents=True, exist_ok=True)
    exec_root = Path(tempfile.mkdtemp(prefix="dg-docker-exec-"))
    sock = exec_root / "docker.sock"
    pidfile = exec_root / "docker.pid"
    logfile = state / "dockerd.log"
    cmd = [
        "dockerd",
        "--data-root",
        str(state / "data"),
        "--exec-root",
        str(exec_root / "exec"),
        "-H",
        f"unix://{sock}",
        "--pidfile",
        str(pidfile),
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
    ]
    log(f"starting dockerd (data root {state / 'data'}, log {logfile})")
    with logfile.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = [docker_client(), "-H", f"unix://{sock}"]
    try:
        for _ in range(120):
            if proc.poll() is not None:
                sys.exit(f"[container] dockerd exited with {proc.returncode}; see {logfile}")
            if run(*client, "version", check=False, capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            sys.exit(f"[container] dockerd did not answer within 60 s; see {logfile}")
        yield client
    finally:
        pid = int(pidfile.read_text()) if pidfile.is_file() else proc.pid
        log(f"stopping dockerd (PID {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            proc.wait()
        cleanup_network()
        shutil.rmtree(exec_root, ignore_errors=True)


def cleanup_network() -> None:
    """Removes what a dockerd with default networking would leave behind (none is made
    with --iptables=false --bridge=none; this also tidies after one that did)."""
    if shutil.which("iptables"):
        for table, chains in (
            ("nat", ["DOCKER"]),
            ("filter", ["DOCKER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2", "DOCKER-USER"]),
        ):
            for chain in chains:
                if run(
                    "iptables", "-t", table, "-n", "-L", chain, check=False, capture_output=True
                ).returncode:
                    continue
                for parent in ("PREROUTING", "OUTPUT", "FORWARD"):
                    while (
                        run(
                            "iptables",
                            "-t",
                            table,
                            "-D",
                            parent,
                            "-j",
                            chain,
                            check=False,
                            capture_output=True,
                        ).returncode
                        == 0
                    ):
                        pass
                run("iptables", "-t", table, "-F", chain, check=False, capture_output=True)
                run("iptables", "-t", table, "-X", chain, check=False, capture_output=True)
    if Path("/sys/class/net/docker0").exists() and shutil.which("ip"):
        run("ip", "link", "delete", "docker0", check=False, capture_output=True)


def extra_ca_certs() -> str:
    """The host's locally added CA certificates (e.g. a TLS-intercepting proxy's)."""
    folder = Path("/usr/local/share/ca-certificates")
    return "".join(p.read_text() for p in sorted(folder.glob("*.crt"))) if folder.is_dir() else ""


def apt_mirror() -> str:
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if line.startswith("URIs:") and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if line.startswith("deb ") and len(words) > 1 and "security" not in line:
                return words[1] if not words[1].startswith("[") else words[2]
    return "http://deb.debian.org/debian"


def ensure_base(client: list[str]) -> None:
    if run(*client, "image", "inspect", BASE, check=False, capture_output=True).returncode == 0:
        log(f"base image {BASE} exists")
        return
    mirror = apt_mirror()
    log(f"making base image {BASE} from Debian packages (debootstrap, mirror {mirror})")
    with tempfile.TemporaryDirectory(prefix="dg-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,python3-pip,ca-certificates",
            "bookworm",
            str(rootfs),
            mirror,
        )
        certs = extra_ca_certs()
        if certs:
            (rootfs / "usr/local/share/ca-certificates/host-extra.crt").write_text(certs)
            run("chroot", str(rootfs), "update-ca-certificates", capture_output=True)
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / leftover, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        path = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        run(*client, "import", "--change", path, "-", BASE, stdin=tar.stdout, capture_output=True)
        if tar.wait() != 0:
            sys.exit("[container] tar of the base rootfs failed")


@contextlib.contextmanager
def wheel_server(folder: Path | None) -> Iterator[str | None]:
    """Serves a local PEP 503 index (``folder/simple``) on 127.0.0.1; yields its URL."""
    if folder is None:
        yield None
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)
        log(f"serving local wheels from {folder} on 127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}/simple"
    finally:
        proc.terminate()
        proc.wait()


def build(client: list[str], index: str | None) -> tuple[float, int]:
    args = [*client, "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE}", "-t", IMAGE]
    if index:
        args += ["--build-arg", f"TORCH_INDEX_URL={index}"]
    certs = extra_ca_certs()
    if certs:
        args += ["--build-arg", f"EXTRA_CA_CERTS={certs}"]
    log("building the image from the Dockerfile")
    start = time.perf_counter()
    run(*args, str(ROOT), env={**os.environ, "DOCKER_BUILDKIT": "1"})
    seconds = time.perf_counter() - start
    size = int(run(*client, "image", "inspect", "-f", "{{.Size}}", IMAGE, capture_output=True).stdout.strip())
    return seconds, size


def gate_in_container(
    client: list[str], candidate: Path, data: Path, reports: Path, *extra: str, mounts: tuple[str, ...] = ()
) -> int:
    reports.mkdir(parents=True, exist_ok=True)
    os.chown(reports, 10001, -1) if os.geteuid() == 0 else reports.chmod(0o777)
    cmd = [
        *client,
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{candidate.parent}:/models:ro",
        "-v",
        f"{data}:/data:ro",
        "-v",
        f"{reports}:/reports",
        *[a for m in mounts for a in ("-v", m)],
        IMAGE,
        "--candidate",
        f"/models/{candidate.name}",
        *extra,
    ]
    return run(*cmd, check=False).returncode


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drift-gate", default="drift-gate", help="the host's drift-gate (for comparison)")
    parser.add_argument(
        "--candidate", type=Path, default=None, help="default: the ci profile's FT checkpoint"
    )
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "phantoms")
    parser.add_argument(
        "--state", type=Path, default=None, help="dockerd data root (default ~/.cache/drift-gate/docker)"
    )
    parser.add_argument(
        "--wheels",
        type=Path,
        default=Path("/opt/pypi-more"),
        help="a local index with simple/torch (if present)",
    )
    args = parser.parse_args()
    # The image bakes in baselines/: the pinned reference's (profile ci), so the candidate is
    # its fine-tune (`nox -s train -- --profile ci`).
    candidate = args.candidate or ROOT / "checkpoints-ci" / "mobilenet_v3_small" / "ft.pt"
    if not candidate.is_file() or not (args.data / "manifest.csv").is_file():
        sys.exit(
            "[container] needs a trained candidate and its data: run `nox -s train -- --profile ci` first"
        )
    candidate = candidate.resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    state = args.state or cache / "drift-gate" / "docker"
    wheels = args.wheels if (args.wheels / "simple" / "torch").is_dir() else None
    ensure_packages()
    with tempfile.TemporaryDirectory(prefix="dg-container-") as tmp:
        work = Path(tmp)
        log(f"host gate on {candidate}")
        host_reports = work / "host"
        host_code = run(
            args.drift_gate,
            "gate",
            "--candidate",
            str(candidate),
            "--data",
            str(args.data),
            "--reports",
            str(host_reports),
            "--no-progress",
            check=False,
            cwd=ROOT,
            capture_output=True,
        ).returncode
        host = json.loads((host_reports / "gate.json").read_text())["candidates"][0]
        with dockerd(state) as client:
            ensure_base(client)
            with wheel_server(wheels) as index:
                seconds, size = build(client, index)
            log(f"built {IMAGE} in {seconds:.0f} s; image size {size / 1e9:.2f} GB")
            code = gate_in_container(client, candidate, args.data.resolve(), work / "c1")
            got = json.loads((work / "c1" / "gate.json").read_text())["candidates"][0]
            strict = work / "strict.toml"
            strict.write_text(STRICT)
            strict.chmod(0o644)
            code_strict = gate_in_container(
                client,
                candidate,
                args.data.resolve(),
                work / "c2",
                mounts=(f"{strict}:/app/thresholds.toml:ro",),
            )
            strict_verdict = json.loads((work / "c2" / "gate.json").read_text())["verdict"]
            code_missing = gate_in_container(
                client, candidate.parent / "missing.pt", args.data.resolve(), work / "c3"
            )
            html = (work / "c1" / "gate.html").stat().st_size
    problems = []
    if code != host_code:
        problems.append(f"container exit code {code} != host {host_code}")
    if got["verdict"] != host["verdict"] or abs(got["auc"] - host["auc"]) > 1e-4:
        problems.append(
            f"container verdict/AUC {got['verdict']}/{got['auc']} != host {host['verdict']}/{host['auc']}"
        )
    if code_strict != 1 or strict_verdict != "fail":
        problems.append(f"strict thresholds: exit {code_strict}, verdict {strict_verdict} (want 1, fail)")
    if code_missing != 2:
        problems.append(f"missing candidate: exit {code_missing} (want 2)")
    shown = candidate.relative_to(ROOT) if candidate.is_relative_to(ROOT) else candidate
    print(f"image {IMAGE}: built in {seconds:.0f} s, {size / 1e9:.2f} GB")
    print(
        f"docker run --candidate {shown}: exit {code} (host {host_code}), verdict {got['verdict']}, "
        f"AUC {got['auc']:.4f} (host {host['auc']:.4f}), predictions {got.get('predictions', '?')}, "
        f"gate.html {html / 1024:.0f} KiB"
    )
    print(
        f"mounted strict thresholds.toml: exit {code_strict} ({strict_verdict}); "
        f"missing candidate: exit {code_missing}"
    )
    if problems:
        sys.exit("[container] FAILED: " + "; ".join(problems))
    print("container check: OK")


if __name__ == "__main__":
    main()
