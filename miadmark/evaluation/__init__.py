"""The third parties of `miadmark evaluate` (one module each) and the readability metrics."""

from __future__ import annotations

from .adaptive import Adaptive
from .base import Arena, OwnImages, ThirdParty, parse_options
from .careful import Careful
from .careful_marks import CarefulMarks
from .inpainted import MarkInpainted
from .jpeg import Jpeg
from .plain import Plain
from .removal import Removal
from .resize import Resize

THIRD_PARTIES: dict[str, type[ThirdParty]] = {c.name: c for c in (Plain, Careful, CarefulMarks, Adaptive, Removal,
                                                                  MarkInpainted, Jpeg, Resize)}


def make_third_parties(names: list[str] | None, options: dict | None) -> list[ThirdParty]:
    """The named third parties (all when None) with their typed options ({name: {option: value}}); unknown
    names and options refused."""
    names = list(THIRD_PARTIES) if names is None else names
    options = dict(options or {})
    bad = sorted(set(names) - set(THIRD_PARTIES)) + sorted(set(options) - set(names))
    if bad:
        raise ValueError(f"unknown or unselected third part(ies) {', '.join(bad)} (known: {', '.join(THIRD_PARTIES)})")
    return [THIRD_PARTIES[n](options.get(n)) for n in names]


__all__ = ["THIRD_PARTIES", "Arena", "OwnImages", "ThirdParty", "make_third_parties", "parse_options"]
