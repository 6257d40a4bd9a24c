"""What machine a number was measured on: benchmarks and evaluation reports state it."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPU to report
        return "none"


def describe() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"machine: {platform.node()} {platform.system()} {platform.release()}, {cpu_model()}, "
            f"{os.cpu_count()} cores, load {load}, GPU {gpu_name()}, python {platform.python_version()}")
