"""Kubernetes resource quantities and durations, parsed exactly.

The model validates every quantity the user writes (``"500m"``, ``"4Gi"``) and the
builders size placeholder pods from them, so both need the same exact arithmetic.
Decimal keeps ``0.1 + 0.2`` honest; Kubernetes itself never uses floats here.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
}
_QUANTITY = re.compile(r"^(?P<num>\d+(?:\.\d+)?)(?P<suffix>m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_DURATION = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")


def parse_quantity(text: str) -> Decimal:
    """Return the value of a Kubernetes quantity in base units (cores or bytes)."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(
            f"'{text}' is not a Kubernetes quantity (examples: '2', '500m', '4Gi', '512Mi')"
        )
    return Decimal(match["num"]) * _SUFFIXES[match["suffix"] or ""]


def format_cpu(cores: Decimal) -> str:
    """Render cores as millicores (``"1500m"``), the form the API server keeps."""
    return f"{int(cores * 1000)}m"


def format_memory(num_bytes: Decimal, *, round_up: bool = False) -> str:
    """Render bytes as whole mebibytes (``"3072Mi"``), rounding down (a request that must
    fit) or, with ``round_up``, up (a limit that must hold it)."""
    rounding = ROUND_CEILING if round_up else ROUND_FLOOR  # Decimal's // truncates
    return f"{int((num_bytes / 2**20).to_integral_value(rounding=rounding))}Mi"


def parse_duration(text: str) -> int:
    """Return the seconds in a Go-style duration of hours, minutes and seconds (``"1h30m"``)."""
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"'{text}' is not a duration (examples: '30s', '5m', '720h', '1h30m')")
    return int(match["h"] or 0) * 3600 + int(match["m"] or 0) * 60 + int(match["s"] or 0)
