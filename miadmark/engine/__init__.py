"""Watermark engines behind `miadmark protect`, chosen by profile name."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .profile import ImageContext, Profile

if TYPE_CHECKING:
    import torch

    from .base import Engine

# profile name -> "module:Class". Engines are imported only when used (torch models are heavy).
ENGINES: dict[str, str] = {
    "plain": "miadmark.engine.plain:PlainLogoEngine",
    "transfer": "miadmark.engine.transfer:TransferEngine",
    "paper": "miadmark.engine.paper:PaperEngine",
    "cloak": "miadmark.engine.cloak:CloakEngine",
}
DEFAULT_PROFILE = "cloak"


def get_engine(profile: str | Profile = DEFAULT_PROFILE, device: str | torch.device = "auto") -> Engine:
    if isinstance(profile, str):
        profile = Profile(name=profile)
    target = ENGINES.get(profile.name)
    if target is None:
        raise ValueError(f"unknown profile {profile.name!r} (known: {', '.join(sorted(ENGINES))})")
    from .base import resolve_device  # torch is imported only when an engine is made

    module, cls = target.split(":")
    return getattr(import_module(module), cls)(profile, resolve_device(device))


def __getattr__(name: str):
    if name in ("Engine", "WatermarkBatch", "resolve_device"):
        return getattr(import_module("miadmark.engine.base"), name)
    raise AttributeError(name)


__all__ = ["ENGINES", "DEFAULT_PROFILE", "Engine", "ImageContext", "Profile", "WatermarkBatch",
           "get_engine", "resolve_device"]
