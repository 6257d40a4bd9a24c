"""What an engine is asked to do (Profile) and may know about an image (ImageContext).

Kept free of torch so that commands which only read profiles start fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Profile:
    """How to watermark. Engines read the fields they need and ignore the rest."""

    name: str = "plain"
    max_area_fraction: float = 1 / 9  # the logo's bounding box covers at most this much of the image
    alpha_max: float = 0.6  # transparency cap (Adv-watermark caps it too)
    logo: str | None = None  # PNG path (alpha channel = shape); None renders the default logo
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageContext:
    """What the engine may know about one image besides its pixels (no patient data)."""

    modality: str = ""
    photometric: str = ""
    sop_instance_uid: str = ""
