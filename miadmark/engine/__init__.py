"""Watermark engines behind `miadmark protect`, chosen by profile name."""

from __future__ import annotations

from importlib import import_module

import torch

from .base import Engine, ImageContext, Profile, WatermarkBatch, resolve_device

# profile name -> "module:Class". Engines are imported only when used (torch models are heavy).
ENGINES: dict[str, str] = {
    "plain": "miadmark.engine.plain:PlainLogoEngine",
    "transfer": "miadmark.engine.transfer:TransferEngine",
    "paper": "miadmark.engine.paper:PaperEngine",
}
DEFAULT_PROFILE = "transfer"


def get_engine(profile: str | Profile = DEFAULT_PROFILE, device: str | torch.device = "auto") -> Engine:
    if isinstance(profile, str):
        profile = Profile(name=profile)
    target = ENGINES.get(profile.name)
    if target is None:
        raise ValueError(f"unknown profile {profile.name!r} (known: {', '.join(sorted(ENGINES))})")
    module, cls = target.split(":")
    return getattr(import_module(module), cls)(profile, resolve_device(device))


__all__ = ["ENGINES", "DEFAULT_PROFILE", "Engine", "ImageContext", "Profile", "WatermarkBatch",
           "get_engine", "resolve_device"]
