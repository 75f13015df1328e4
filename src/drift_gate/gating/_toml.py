"""Where a key of a TOML file is, for errors that name its line: the parsing context of
``thresholds.toml`` (:mod:`drift_gate.gating.thresholds`)."""

from __future__ import annotations

import math
import re
from typing import Any

from drift_gate.errors import ConfigError

__all__ = ["Ctx", "as_number", "line_of", "section", "table_line"]


def _header_re(parts: list[str]) -> re.Pattern[str]:
    inner = r"\s*\.\s*".join(rf'(?:"{re.escape(p)}"|{re.escape(p)})' for p in parts)
    return re.compile(rf"^\s*\[\s*{inner}\s*\]\s*(#.*)?$")


def line_of(text: str, table: list[str], key: str | None = None) -> int:
    """1-based line of ``key`` inside table ``table`` (or of the table header)."""
    lines = text.splitlines()
    header = _header_re(table) if table else None
    start = 0
    if header is not None:
        for i, line in enumerate(lines):
            if header.match(line):
                start = i + 1
                break
        else:
            start = 0
    if key is None:
        return max(start, 1)
    first = key.split(".")[0]
    key_re = re.compile(rf'^\s*(?:"{re.escape(first)}"|{re.escape(first)})\s*[.=]')
    for i in range(start, len(lines)):
        if i > start and lines[i].lstrip().startswith("[") and header is not None:
            break
        if key_re.match(lines[i]):
            return i + 1
    return max(start, 1)


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
