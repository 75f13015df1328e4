"""Command-line adapter: ``main(argv) -> int``; errors become messages and exit codes here.

Exit codes: 0 success or gate passed · 1 gate rule violated · 2 usage or input
error · 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from drift_gate._io import ALLOW_OUTSIDE, side_output
from drift_gate._memory import AUDIT, allocator_policy
from drift_gate.cli.parser import build_parser
from drift_gate.cli.streams import flush_stdout, printable_streams, silence_stdout
from drift_gate.errors import DriftGateError

__all__ = ["entry_point", "main"]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns its exit code; never raises for expected failures."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    printable_streams()
    code = _run(args)
    if args.command == "gate":
        _github_exit_code(code)
    flush_stdout()
    return code


def _github_exit_code(code: int) -> None:
    """Under GitHub Actions, the gate's exit code reaches the step outputs on every path
    (a verdict, an input error, an interrupt), so a workflow can tell them apart."""
    path = os.environ.get("GITHUB_OUTPUT")
    if path and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        with (
            side_output(f"the exit code output (GITHUB_OUTPUT={path})"),
            open(path, "a", encoding="utf-8") as fh,
        ):
            fh.write(f"exit_code={code}\n")


def _run(args: argparse.Namespace) -> int:
    """Runs the parsed command; every outcome becomes an exit code here."""
    allocator_policy(AUDIT)  # training switches to TRAIN, and each gate back (drift_gate._memory)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    allow = os.environ.get(ALLOW_OUTSIDE)
    if getattr(args, "allow_outside_data_root", False):
        os.environ[ALLOW_OUTSIDE] = "1"
    try:
        if args.threads is not None:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(args.threads)
            try:
                return int(args.func(args))
            finally:
                torch.set_num_threads(threads)  # main() is also called in-process
        return int(args.func(args))
    except DriftGateError as exc:
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print("drift-gate: interrupted; no partial files were left behind", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `drift-gate gate ... | head -1`: nothing more can be said
        silence_stdout()
        return 2
    except (OSError, RecursionError, MemoryError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        # The one boundary: whatever escaped a command is still one line and exit 2, never
        # a traceback with exit 1, which CI would read as "a rule failed".
        if os.environ.get("DRIFT_GATE_DEBUG"):
            raise
        text = str(exc).splitlines()[0][:300] if str(exc) else ""
        _error(f"unexpected {type(exc).__name__}: {text} (DRIFT_GATE_DEBUG=1 shows the traceback)")
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
        if allow is None:  # main() is also called in-process: the setting ends with the command
            os.environ.pop(ALLOW_OUTSIDE, None)
        else:
            os.environ[ALLOW_OUTSIDE] = allow


def _error(message: str) -> None:
    """The one error line (its text on one line, whatever the message holds)."""
    line = " ".join(message.split("\n"))
    with contextlib.suppress(BrokenPipeError, OSError):
        print(f"drift-gate: error: {line}", file=sys.stderr)


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main(sys.argv[1:]))
