"""What an engine is asked to do (Profile) and may know about an image (ImageContext).

Kept free of torch so that commands which only read profiles start fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# The strength levels (their budgets: constraints.LEVELS); names only here, so config validation needs no torch.
STRENGTHS = ("discreet", "standard", "strong")
DEFAULT_STRENGTH = "standard"


def profile_spec(name: str | None, strength: str | None) -> str | None:
    """One string for a profile name and a strength, "NAME:STRENGTH" (":STRENGTH" for the default profile), as
    rules hand a profile to the ways out (gateway, plugin, release) and `get_engine` reads it; None, or the name
    alone, when no strength is set."""
    if strength is None:
        return name
    if strength not in STRENGTHS:
        raise ValueError(f"unknown strength {strength!r} (known: {', '.join(STRENGTHS)})")
    return f"{name or ''}:{strength}"


def split_spec(spec: str | None) -> tuple[str | None, str | None]:
    """(profile name or None, strength or None) of a profile spec ("cloak", "auto:strong", ":discreet")."""
    if spec is None:
        return None, None
    name, sep, strength = spec.partition(":")
    if sep and strength not in STRENGTHS:
        raise ValueError(f"unknown strength {strength!r} (known: {', '.join(STRENGTHS)})")
    return name or None, strength or None


@dataclass(frozen=True)
class Profile:
    """How to watermark. Engines read the fields they need and ignore the rest."""

    name: str = "plain"
    max_area_fraction: float = 1 / 9  # the logo's bounding box covers at most this much of the image
    alpha_max: float = 0.6  # transparency cap (Adv-watermark caps it too)
    logo: str | None = None  # PNG path (alpha channel = shape); None renders the default logo
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # the engine's typed options (options.py)
    strength: str | None = None  # discreet | standard | strong (constraints.LEVELS); None: the default level

    def __post_init__(self):
        """Refuse an unknown strength or option key at once (ValueError naming it), before any work is done;
        `auto` is checked when it has become an engine (get_engine)."""
        if self.strength is not None and self.strength not in STRENGTHS:
            raise ValueError(f"unknown strength {self.strength!r} (known: {', '.join(STRENGTHS)})")
        from .options import OPTION_TYPES, parse_options

        if self.name in OPTION_TYPES:
            parse_options(self.name, self.options)


@dataclass
class ImageContext:
    """What the engine may know about one image besides its pixels (no patient data)."""

    modality: str = ""
    photometric: str = ""
    sop_instance_uid: str = ""
    # the per-image key of the spread mark's geometry (spread.mark_key: HMAC of the site secret and the
    # instance/frame); empty: derived from the profile's seed and the SOP Instance UID (tests, evaluation)
    mark_key: bytes = b""
