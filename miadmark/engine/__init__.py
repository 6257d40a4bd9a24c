"""Watermark engines behind `miadmark protect`, chosen by profile name."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .profile import DEFAULT_STRENGTH, STRENGTHS, ImageContext, Profile, profile_spec, split_spec

if TYPE_CHECKING:
    import torch

    from .base import Engine

# profile name -> "module:Class". Engines are imported only when used (torch models are heavy).
ENGINES: dict[str, str] = {
    "plain": "miadmark.engine.plain:PlainLogoEngine",
    "transfer": "miadmark.engine.transfer:TransferEngine",
    "paper": "miadmark.engine.paper:PaperEngine",
    "cloak": "miadmark.engine.cloak:CloakEngine",
    "fast": "miadmark.engine.fast:FastEngine",
}
# `auto` is no engine: it names the profile that fits the machine (resolve_profile)
AUTO = "auto"
# what `auto` means on a GPU (the iterative engine) and on a CPU (the one-pass generator)
GPU_PROFILE, CPU_PROFILE = "cloak", "fast"
# the default of every way out (CLI, gateway, Orthanc plugin, release): an adversarial watermark that keeps up
DEFAULT_PROFILE = AUTO
PROFILE_NAMES = sorted([*ENGINES, AUTO])
STRENGTH_HELP = (f"how strong the mark is: {', '.join(STRENGTHS)} (default {DEFAULT_STRENGTH}; discreet: the logo "
                 "in a box + an imperceptible cloak; standard / strong: a keyed see-through lattice over the image)")
# the --profile help of every command that takes one
PROFILE_HELP = (f"watermark profile: {', '.join(PROFILE_NAMES)} (default {DEFAULT_PROFILE}: {GPU_PROFILE} on a GPU, "
                f"{CPU_PROFILE} on a CPU)")


def resolve_profile(name: str | None, device: str | torch.device = "auto") -> str:
    """The engine a profile name means on a device: `auto` is the iterative `cloak` on a GPU and the one-pass
    `fast` on a CPU; None (or "") is the default, `auto`; any other name is itself. A spec with a strength
    ("auto:strong", profile.split_spec) keeps its strength. The one place `auto` is decided (get_engine, hence
    loaded.engine, protect, the gateway and the Orthanc plugin, go through here)."""
    base, strength = split_spec(name or None)
    base = base or DEFAULT_PROFILE
    if base == AUTO:
        from .base import resolve_device

        base = GPU_PROFILE if resolve_device(device).type == "cuda" else CPU_PROFILE
    return profile_spec(base, strength)


def get_engine(profile: str | Profile = DEFAULT_PROFILE, device: str | torch.device = "auto") -> Engine:
    """The engine of a profile (a Profile, or a name / spec "NAME:STRENGTH") on a device. Its options are
    typed (options.py): an unknown key is a ValueError naming it."""
    from dataclasses import replace

    if isinstance(profile, str):
        name, strength = split_spec(profile)
        profile = Profile(name=name or DEFAULT_PROFILE, strength=strength)
    if profile.strength is not None and profile.strength not in STRENGTHS:
        raise ValueError(f"unknown strength {profile.strength!r} (known: {', '.join(STRENGTHS)})")
    if profile.name == AUTO:  # the record names the engine actually used
        profile = replace(profile, name=resolve_profile(AUTO, device))
    target = ENGINES.get(profile.name)
    if target is None:
        raise ValueError(f"unknown profile {profile.name!r} (known: {', '.join(PROFILE_NAMES)})")
    from .base import resolve_device  # torch is imported only when an engine is made

    module, cls = target.split(":")
    return getattr(import_module(module), cls)(profile, resolve_device(device))


def __getattr__(name: str):
    if name in ("Engine", "WatermarkBatch", "resolve_device"):
        return getattr(import_module("miadmark.engine.base"), name)
    raise AttributeError(name)


__all__ = ["AUTO", "CPU_PROFILE", "ENGINES", "DEFAULT_PROFILE", "DEFAULT_STRENGTH", "GPU_PROFILE", "STRENGTHS",
           "STRENGTH_HELP", "PROFILE_HELP", "PROFILE_NAMES", "Engine", "ImageContext", "Profile", "WatermarkBatch",
           "get_engine", "profile_spec", "resolve_device", "resolve_profile", "split_spec"]
