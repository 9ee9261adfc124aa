"""Which device and process group hfstage runs on: the one place that decides CPU vs accelerator."""

from __future__ import annotations

import torch
from accelerate import PartialState


def cpu_only() -> bool:
    """True when no accelerator is visible, so Trainer/accelerate must be told to use the CPU.

    Without ``use_cpu=True`` a 2-process launch on a machine without GPUs runs two unsynchronised
    single-process jobs instead of one gloo DDP job (see accelerate_configs/cpu_ddp.yaml).
    """
    return not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())


def distributed_state() -> PartialState:
    """The process group, initialised the same way the Trainer will (CPU gloo when there is no GPU)."""
    return PartialState(cpu=cpu_only())
