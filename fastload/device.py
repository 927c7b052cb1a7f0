"""The one place that decides whether CUDA is usable: device prefetch, pinning, GPU JPEG
decode and DALI's GPU pipeline all ask here, and fall back to the CPU (saying so once)
when it answers no."""

from __future__ import annotations

import torch


def cuda_usable() -> bool:
    """Whether torch can put tensors on a CUDA device here (a CUDA build, a driver, a device)."""
    return torch.cuda.is_available() and torch.cuda.device_count() > 0
