"""Kubernetes resource quantities ("500m", "8Gi"), as far as KubeRay does arithmetic on them.

Follows k8s.io/apimachinery/pkg/api/resource (Quantity.Value rounds up to a whole number;
Add keeps the format of the receiver; the canonical string form), used by
ray-operator/controllers/ray/common/pod.go (generateRayStartCommand: num-cpus, memory, num-gpus)
and ray-operator/controllers/ray/utils/util.go (CalculateDesiredResources, SumResourceList).
Simplifies: exponent forms ("1e3") are parsed but always printed with SI suffixes.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_PATTERN = re.compile(r"([+-]?[0-9.]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?")


class Quantity:
    """An exact value and the format ("binary" or "decimal") it prints in."""

    def __init__(self, value: Fraction, binary: bool = False) -> None:
        self.value, self.binary = value, binary

    @classmethod
    def parse(cls, text: str | int | float) -> Quantity:
        m = _PATTERN.fullmatch(str(text).strip())
        if not m:
            raise ValueError(f"{text!r} is not a quantity")
        number, suffix = Fraction(m.group(1)), m.group(2) or ""
        if suffix in _BINARY:
            return cls(number * 1024 ** _BINARY[suffix], binary=True)
        if suffix[:1] in ("e", "E"):
            return cls(number * Fraction(10) ** int(suffix[1:]))
        return cls(number * Fraction(10) ** _DECIMAL[suffix])

    def whole(self) -> int:
        """Quantity.Value(): rounded up to a whole number."""
        return math.ceil(self.value)

    def is_zero(self) -> bool:
        return self.value == 0

    def __add__(self, other: Quantity) -> Quantity:
        return Quantity(self.value + other.value, self.binary)

    def __str__(self) -> str:
        v = self.value
        if v == 0:
            return "0"
        if self.binary and v.denominator == 1:
            # The largest binary suffix the value is a whole multiple of (1536Mi stays 1536Mi).
            for suffix, power in sorted(_BINARY.items(), key=lambda kv: -kv[1]):
                if v % 1024**power == 0:
                    return f"{v // 1024**power}{suffix}"
            return str(v)
        # Decimal: the largest exponent (a multiple of 3) that leaves a whole mantissa.
        for suffix, exp in sorted(_DECIMAL.items(), key=lambda kv: -kv[1]):
            mantissa = v / Fraction(10) ** exp
            if mantissa.denominator == 1:
                return f"{mantissa.numerator}{suffix}"
        return f"{math.ceil(v * 10**9)}n"


def pod_resources(pod_spec: dict) -> dict[str, Quantity]:
    """CalculatePodResource: per container, requests win over limits; summed over containers."""
    total: dict[str, Quantity] = {}
    for c in pod_spec.get("containers") or []:
        res = c.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        for name, q in merged.items():
            quantity = Quantity.parse(q)
            total[name] = total[name] + quantity if name in total else quantity
    return total


def sum_resources(lists: list[dict[str, Quantity]]) -> dict[str, Quantity]:
    """SumResourceList: the first quantity of a name sets the format."""
    total: dict[str, Quantity] = {}
    for resources in lists:
        for name, q in resources.items():
            total[name] = total[name] + q if name in total else Quantity(q.value, q.binary)
    return total
