"""Which accelerators the workers started from here would get."""

from __future__ import annotations

import glob


def gpu_count() -> int:
    """GPUs a worker started here would see. Without NVIDIA device files (/dev/nvidiactl, ...) there
    are none, and torch (seconds to import) is not asked; with them, torch counts what
    CUDA_VISIBLE_DEVICES leaves."""
    if not glob.glob("/dev/nvidia*"):
        return 0
    import torch

    return torch.cuda.device_count()
