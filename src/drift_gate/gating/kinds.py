"""Bound kinds: what ``iou.min`` or ``correlation.max_drop`` means, in one place.

Each kind is a :class:`Kind` that knows which side of the observed value it bounds,
whether it bounds the value itself, its magnitude or its change from the approved
value, how it reads (``>= 0.3``), how far an observation is from breaking it, which
end of a confidence interval is the conservative one, which values a bound of it may
take on a metric, and (for the absolute kinds) how ``calibrate`` proposes one. The
thresholds parser, the rules, ``calibrate`` and ``validate`` ask the kind; none of
them compares kind names. A new kind is one more entry in :data:`KINDS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from drift_gate.evidence.registry import Direction

__all__ = ["KINDS", "Kind", "for_direction"]


@dataclass(frozen=True)
class Kind:
    """One kind of bound.

    Attributes:
        name: the key in a thresholds file (``min``, ``max_drop``, …).
        lower: the bound is a floor (the observation must be at least it); else a ceiling.
        relative: the bound is the approved value minus (a floor) or plus (a ceiling) the
            number given; without an approved value there is nothing to compare yet.
        magnitude: the ceiling is on the observation's absolute value (``abs_max``).
    """

    name: str
    lower: bool
    relative: bool = False
    magnitude: bool = False

    @property
    def non_negative(self) -> bool:
        """Whether the number given is a width (a change or a magnitude), never negative."""
        return self.relative or self.magnitude

    def effective(self, value: float, approved: float | None) -> tuple[str, float]:
        """``(direction text, bound)`` of ``value``; a relative kind needs ``approved``."""
        if self.relative:
            assert approved is not None
            sign = "-" if self.lower else "+"
            op = ">=" if self.lower else "<="
            return (
                f"{op} approved {approved:.4f} {sign} {value:g}",
                approved - value if self.lower else approved + value,
            )
        if self.magnitude:
            return f"|x| <= {value:g}", value
        return f"{'>=' if self.lower else '<='} {value:g}", value

    def holds(self, observed: float, bound: float) -> bool:
        """Whether ``observed`` keeps the (effective) bound."""
        if self.magnitude:
            return abs(observed) <= bound
        return observed >= bound if self.lower else observed <= bound

    def margin(self, observed: float, bound: float) -> float:
        """How far ``observed`` is from breaking the bound, in the metric's units (< 0: broken)."""
        if self.magnitude:
            return bound - abs(observed)
        return observed - bound if self.lower else bound - observed

    def conservative(self, low: float, high: float) -> float:
        """The end of a confidence interval ``[low, high]`` that is worse for this bound."""
        if self.magnitude:
            return max(abs(low), abs(high))
        return low if self.lower else high

    def interval_breaks(self, low: float, high: float, bound: float) -> bool:
        """Whether every value of ``[low, high]`` breaks the bound."""
        if self.magnitude:
            return low > bound or high < -bound
        return not (self.holds(low, bound) or self.holds(high, bound))

    def allowed(self, lo: float, hi: float) -> tuple[float, float]:
        """The numbers a bound of this kind may be on a metric whose values lie in ``[lo, hi]``
        (a bound outside could never be reached, or never be broken)."""
        if self.relative:
            return 0.0, hi - lo
        if self.magnitude:
            return 0.0, max(abs(lo), abs(hi))
        return lo, hi

    def propose(self, centre: float, noise: float, k: float, limits: tuple[float, float]) -> float:
        """``k`` noise widths beyond ``centre`` on the worse side, rounded outwards to 0.01
        and kept within what the parser accepts (absolute kinds only)."""
        assert not self.relative, "calibrate proposes absolute bounds"
        lo, hi = self.allowed(*limits)
        if self.magnitude:
            bound = math.ceil((abs(centre) + k * noise) * 100 - 1e-9) / 100
        elif self.lower:
            bound = math.floor((centre - k * noise) * 100 + 1e-9) / 100
        else:
            bound = math.ceil((centre + k * noise) * 100 - 1e-9) / 100
        return min(hi, max(lo, bound))


#: Every kind, by its key: absolute (``min``, ``max``, ``abs_max``) and relative to the
#: approved value (``max_drop``, ``max_rise``).
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("min", lower=True),
        Kind("max", lower=False),
        Kind("abs_max", lower=False, magnitude=True),
        Kind("max_drop", lower=True, relative=True),
        Kind("max_rise", lower=False, relative=True),
    )
}


def for_direction(direction: Direction) -> Kind:
    """The absolute kind that guards a metric whose better side is ``direction``: a floor
    for higher-is-better, a ceiling for lower-is-better, a magnitude for closer-to-0."""
    return KINDS[{Direction.HIGHER: "min", Direction.LOWER: "max", Direction.ZERO: "abs_max"}[direction]]
