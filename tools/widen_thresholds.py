"""Widens a proposed ``thresholds.toml`` by the bounds of another calibration.

Each calibration's bounds cover the honest runs of the machine it ran on. Where two ran
on different machines (another CPU, other kernels: other TL and FT weights from the same
code), the bound that covers both is the looser one. For every bound in a ``[drift]``
table that both files have, this keeps the looser (``min``: the lower; ``max`` and
``abs_max``: the higher) and says so in the line's comment; everything else of the
proposed file is kept as it is. The result goes to stdout::

    python tools/widen_thresholds.py reports/calibrate/thresholds.proposed.toml \\
        thresholds.toml --label "the 2026-12-03 calibration" > widened.toml
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

#: ``metric.kind = number  # comment``, as calibrate writes a bound
_BOUND = re.compile(r"^(?P<key>[a-z_]+\.(?P<kind>min|max|abs_max)) = (?P<value>-?[0-9.]+)(?P<rest>\s*#.*)?$")


def _section(line: str) -> tuple[str, ...] | None:
    """The path of a ``[table]`` header line (quoted parts as TOML reads them)."""
    if not line.startswith("[") or line.startswith("[["):
        return None
    path: list[str] = []
    node: Any = tomllib.loads(line.split("#", 1)[0].strip() + "\n")
    while isinstance(node, dict) and len(node) == 1:
        ((name, node),) = node.items()
        path.append(name)
    return tuple(path)


def _bounds(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, float]:
    node: Any = doc
    for part in path:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    out: dict[str, float] = {}
    for metric, kinds in node.items() if isinstance(node, dict) else ():
        if isinstance(kinds, dict):
            out.update({f"{metric}.{k}": float(v) for k, v in kinds.items() if isinstance(v, int | float)})
    return out


def widen(proposed: str, other: str, label: str) -> tuple[str, int]:
    """``proposed`` with each shared ``[drift]`` bound replaced by ``other``'s where that
    one is looser; returns the text and how many bounds were widened."""
    doc = tomllib.loads(other)
    out, path, changed = [], None, 0
    for line in proposed.splitlines():
        header = _section(line)
        if header is not None:
            path = header
        m = _BOUND.match(line)
        if m and path and path[0] == "drift":
            theirs = _bounds(doc, path).get(m["key"])
            mine = float(m["value"])
            looser = theirs is not None and (theirs < mine if m["kind"] == "min" else theirs > mine)
            if looser:
                changed += 1
                rest = (m["rest"] or "").strip().removeprefix("#").strip()
                note = f"looser of two calibrations: {theirs:.2f} from {label} (here {mine:.2f})"
                column = len(line) - len(m["rest"].lstrip()) if m["rest"] else 0  # where "#" was
                line = (
                    f"{m['key']} = {theirs:.2f}  ".ljust(column) + f"# {note}" + (f"; {rest}" if rest else "")
                )
        out.append(line)
    return "\n".join(out) + "\n", changed


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("proposed", type=Path, help="the new calibration's thresholds.proposed.toml")
    ap.add_argument("other", type=Path, help="another calibration's thresholds file")
    ap.add_argument("--label", default=None, help="how the comments name the other file (default: its path)")
    args = ap.parse_args(argv)
    text, changed = widen(
        args.proposed.read_text(encoding="utf-8"),
        args.other.read_text(encoding="utf-8"),
        args.label or str(args.other),
    )
    sys.stdout.write(text)
    print(f"widened {changed} bound(s) to {args.label or args.other}'s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
