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


def distributed_state(timeout: float | None = None) -> PartialState:
    """The process group, initialised the same way the Trainer will (CPU gloo when there is no GPU).

    ``timeout`` (seconds; ``training_args.ddp_timeout``): how long a collective operation waits for the other
    processes before it fails. It applies when this call creates the group (the first in the process):
    ``curriculum.run`` makes that call with the recipe's value before anything else."""
    from datetime import timedelta

    _join_restarted_group(timedelta(seconds=timeout or 1800))
    return PartialState(cpu=cpu_only(), **({"timeout": timedelta(seconds=timeout)} if timeout else {}))


def _join_restarted_group(timeout) -> None:
    """After an elastic restart (``accelerate launch --max_restarts N``), join the process group under a key prefix
    of this attempt.

    torchrun's agent keeps one store across restarts, and the group's connection addresses of the first
    attempt stay in it: a restarted process could read a dead process's address before its new peer wrote
    its own, and fail with "Gloo connectFullMesh failed ... Connection refused" (seen in about half of the
    restarts here). accelerate then uses the group as it finds it."""
    import os

    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if (restart == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            or int(os.environ.get("WORLD_SIZE", "1")) < 2 or torch.distributed.is_initialized()):
        return
    world = int(os.environ["WORLD_SIZE"])
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                       is_master=False, timeout=timeout)
    torch.distributed.init_process_group(backend="gloo" if cpu_only() else "nccl", timeout=timeout,
                                         store=torch.distributed.PrefixStore(f"hfstage_attempt_{restart}", store),
                                         rank=int(os.environ["RANK"]), world_size=world)


def ddp_timeout(stages) -> float | None:
    """The recipe's ``training_args.ddp_timeout`` (one value for the whole run: the process group is created once);
    None when no stage sets it."""
    from hfstage.errors import ConfigError

    values = {s.training_args["ddp_timeout"] for s in stages if "ddp_timeout" in s.training_args}
    if len(values) > 1 or (values and any("ddp_timeout" not in s.training_args for s in stages)):
        raise ConfigError("training_args.ddp_timeout: the collective timeout is set once per run, when the process "
                          "group is created; set it in defaults.training_args, not differently per stage")
    return float(values.pop()) if values else None


# glibc malloc settings for training (see ``tune_cpu_allocator``)
MALLOC_TUNING_ENV = "HFSTAGE_MALLOC_TUNING"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1  # the largest value mallopt's int takes
_allocator_tuned: bool | None = None  # None: not decided yet in this process


def tune_cpu_allocator() -> bool:
    """Stop glibc's malloc from handing training's memory back to the kernel after every step.

    A training step frees and reallocates the same activations and gradients each step. PyTorch's CPU
    tensors come straight from ``malloc``, and glibc returns freed memory above its trim threshold to
    the kernel (and serves large blocks with ``mmap``/``munmap``), so the next step page-faults all of
    it back in, zero-filled: ~25,000 page faults and ~30% of a step for the quickstart's pair model on
    the CPU (bench/overhead.py). Raising the mmap threshold to 1 GiB and the trim threshold to 2 GiB
    keeps that memory in the process (blocks above 1 GiB are still mapped and unmapped directly). The
    mmap threshold is set past glibc's own dynamic ceiling (32 MiB) because a larger model's
    activations pass it: resnet18 at 128 px, batch 32, still re-faulted ~16,000 pages per step with a
    32 MiB threshold and ~1,000-2,700 with 1 GiB (~6-10% faster steps, +5% peak RSS). The cost is that
    the process keeps up to its peak heap until it exits, as the CUDA caching allocator does on a GPU.

    Done once per process, only on glibc, and not when an allocator or its settings were chosen explicitly
    (``LD_PRELOAD`` of jemalloc/tcmalloc/mimalloc, ``MALLOC_*_`` variables, ``GLIBC_TUNABLES`` with
    ``glibc.malloc``) or set ``HFSTAGE_MALLOC_TUNING=0``. Returns whether the settings are in force.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    import os
    import platform

    value = os.environ.get(MALLOC_TUNING_ENV, "1").strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        from hfstage.errors import ConfigError

        raise ConfigError(f"environment variable {MALLOC_TUNING_ENV}={value!r}: expected 1 or 0")
    preload = os.environ.get("LD_PRELOAD", "")
    user_choice = (
        value in ("0", "false", "no", "off")
        or any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc"))
        or any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ)
        or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
    )
    _allocator_tuned = False
    if user_choice or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _allocator_tuned
