"""Where a key of a TOML file is, for errors that name its line: the parsing context of
``thresholds.toml`` (:mod:`drift_gate.gating.thresholds`)."""

from __future__ import annotations

import math
import re
from typing import Any

from drift_gate.errors import ConfigError

__all__ = ["Ctx", "as_number", "line_of", "section", "table_line"]


_PART = r"""(?:"(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)"""
_DOTTED = re.compile(rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=(.*)$")
_HEADER = re.compile(rf"^\s*\[\[?\s*({_PART}(?:\s*\.\s*{_PART})*)\s*\]\]?\s*(?:#.*)?$")


def _parts(dotted: str) -> list[str]:
    """The parts of a dotted TOML key (quotes removed; basic escapes left as written)."""
    out = []
    for m in re.finditer(_PART, dotted):
        p = m.group(0)
        out.append(p[1:-1] if p[:1] in "\"'" else p)
    return out


def _locate(text: str, path: list[str]) -> int:
    """1-based line that defines ``path``: the key's own line (in a ``[table]``, as a dotted
    key, or inside an inline table), else the line of the nearest enclosing table, else 1."""
    best, best_depth = 1, 0
    current: list[str] = []
    for i, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            current = _parts(header.group(1))
            if current == path[: len(current)] and len(current) > best_depth:
                best, best_depth = i, len(current)
                if current == path:
                    return i
            continue
        assign = _DOTTED.match(line)
        if not assign:
            continue
        full = current + _parts(assign.group(1))
        if full == path:
            return i
        depth = len(full)
        value = assign.group(2).lstrip()
        # an inline table that holds the key: the key's line is this one
        if full == path[:depth] and value.startswith("{") and depth > best_depth:
            rest = path[depth:]
            if all(
                re.search(rf"(?<![A-Za-z0-9_-])[\"']?{re.escape(r)}[\"']?\s*[.=]", value) for r in rest[:1]
            ):
                return i
            best, best_depth = i, depth
        elif full[: len(path)] == path and len(path) > best_depth:
            best, best_depth = i, len(path)  # a key deeper than the one asked for
    return best


def line_of(text: str, table: list[str], key: str | None = None) -> int:
    """1-based line of ``key`` inside table ``table`` (or of the table itself): its own
    line also when the table is a dotted key or an inline table of an enclosing one."""
    return _locate(text, [*table, *(_parts(key) if key else [])])


def table_line(text: str, table: list[str]) -> int:
    """1-based line of the first header ``[table]`` or ``[table.<more>]``, else of the
    first dotted key that starts with the table's last part."""
    inner = r"\s*\.\s*".join(rf'(?:"{re.escape(p)}"|{re.escape(p)})' for p in table)
    header = re.compile(rf"^\s*\[\s*{inner}\s*[\].]")
    for i, line in enumerate(text.splitlines()):
        if header.match(line):
            return i + 1
    return line_of(text, table[:-1], table[-1])


class Ctx:
    def __init__(self, text: str, path: str) -> None:
        self.text, self.path = text, path

    def where(self, table: list[str], key: str | None = None) -> str:
        name = ".".join(f'"{p}"' if not re.fullmatch(r"[A-Za-z0-9_-]+", p) else p for p in table)
        full = f"{name}.{key}" if key and name else (key or name)
        return f"{self.path}:{line_of(self.text, table, key)}: {full}"

    def fail(self, table: list[str], key: str | None, message: str) -> ConfigError:
        return ConfigError(f"{self.where(table, key)}: {message}")


def as_number(ctx: Ctx, table: list[str], key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ctx.fail(table, key, f"expected a finite number, got {type(value).__name__} {value!r}")
    return float(value)


def section(ctx: Ctx, doc: dict[str, Any], name: str, keys: set[str]) -> dict[str, Any]:
    """A top-level table, checked for type and unknown keys."""
    table = doc.get(name, {})
    if not isinstance(table, dict):
        raise ctx.fail([], name, f"expected a table [{name}], got {type(table).__name__}")
    for key in table:
        if key not in keys:
            raise ctx.fail([name], key, f"unknown key; known: {', '.join(sorted(keys))}")
    return table
