"""A description of the machine a benchmark ran on, so its numbers can be read in context."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import torch

# Packages whose versions shape the timings.
VERSIONED = ("torch", "transformers", "ctranslate2", "faster-whisper")


def _cpuinfo_field(name: str) -> str:
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (runnable processes, all users)."""
    return [round(x, 2) for x in os.getloadavg()]


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def idle_cores() -> int:
    """Usable cores minus the 1-minute load average (work already running), at least 1.

    More threads than idle cores wait on each other: every parallel op ends at a barrier that
    a descheduled thread holds up, which slows many-small-op work such as token-by-token
    decoding several times over and would distort the comparison.
    """
    return max(1, usable_cores() - round(os.getloadavg()[0]))


def describe_machine(device: torch.device) -> dict:
    """CPU model and cores, torch threads, package versions, GPU name, current load."""
    info = {
        "cpu": _cpuinfo_field("model name"),
        "cores": os.cpu_count(),
        "cores_usable": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in VERSIONED},
        "load_average_at_start": load_average(),
    }
    return info
