"""Where the tensors live: ``--device auto|cpu|cuda|cuda:N|mps`` and ``device=`` in the API.

:func:`resolve_device` turns the name into a :class:`torch.device` and refuses, in one sentence
and before any work, a device this machine does not have (``cuda`` without CUDA, ``cuda:3`` on a
machine with two GPUs, ``mps`` off Apple silicon). ``auto`` picks the first CUDA GPU when
``torch.cuda.is_available()``, else the CPU (MPS is used only when asked for by name: some of
the methods' float64 steps are not supported there). Nothing falls back silently: a method
given a device runs its features, scoring, training and inference there, and only moves its
results to the CPU to hand them back as numpy arrays.

:func:`device_free_memory` is what the memory guard compares with on a GPU.
"""

from __future__ import annotations

import re

import torch

from defectscope.errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``name`` (None = ``auto``); ConfigError when it is unknown or absent."""
    if isinstance(name, torch.device):
        text = str(name)
    else:
        text = ("auto" if name is None else str(name)).strip().lower()
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match:
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"--device {text}: CUDA is not available on this machine ({build}, torch {torch.__version__}); use --device cpu or auto")
        index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"--device {text}: this machine has {count} CUDA device(s), numbered 0 to {count - 1}")
        return torch.device("cuda", index)
    if text == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise ConfigError("--device mps: Apple's Metal (MPS) backend is not available on this machine; use --device cpu or auto")
        return torch.device("mps")
    raise ConfigError(f"--device {name!r} is not a device; choose {DEVICE_CHOICES}")


def device_name(name: str | torch.device | None) -> str:
    """The resolved device as text (``cpu``, ``cuda:0``, ``mps``), for settings and reports."""
    return str(resolve_device(name))


def device_free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (``torch.cuda.mem_get_info``); None for the CPU and MPS, where
    the guard uses the machine's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def describe_device(device: torch.device) -> str:
    """One line naming the device (the GPU's model when it is one)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
