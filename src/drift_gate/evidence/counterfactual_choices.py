"""The ``[counterfactual]`` check's named choices, without torch: the thresholds parser
checks a file against them, :mod:`drift_gate.evidence.counterfactual` runs them."""

from __future__ import annotations

__all__ = ["BASELINES", "CONTROLS", "REGIONS", "one_of"]

#: What the region is replaced with.
BASELINES = ("swap", "edge", "mean", "blur")
#: What is replaced: the band's part the map points at (``map``), the whole band (``band``),
#: or each of its four corner squares on its own (``corners``).
REGIONS = ("map", "band", "corners")
#: What each swap's drop is measured against: nothing, or the same region from another
#: image of the same class (the drop that class-coded content does not explain).
CONTROLS = ("none", "same-class")


def one_of(choices: tuple[str, ...]) -> str:
    """``'a', 'b' or 'c'``: the choices as an error message lists them."""
    quoted = [repr(c) for c in choices]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"
