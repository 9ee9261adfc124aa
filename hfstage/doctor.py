"""``hfstage doctor``: is this machine ready to train? Prints what hfstage will run on and exits non-zero
when something needed is missing (a required package, free disk, or -- when asked for -- a GPU or the Hub).
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlsplit

REQUIRED = ("torch", "torchvision", "transformers", "accelerate", "datasets", "evaluate", "timm", "lightgbm",
            "safetensors", "huggingface_hub", "numpy", "yaml", "sklearn", "tensorboard", "matplotlib")
MIN_FREE_GB = 1.0


def _version(name: str) -> tuple[bool, str]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # a broken install raises all sorts
        return False, f"MISSING ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
    return True, getattr(module, "__version__", "installed")


def _hub_answers(timeout: float = 3.0) -> tuple[bool, str]:
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True, f"{constants.ENDPOINT} answers"
    except OSError as exc:
        return False, f"{constants.ENDPOINT} does not answer ({exc})"


def checks(require_gpu: bool = False, require_hub: bool = False, folder: str = ".") -> list[tuple[str, str, bool]]:
    """(what, finding, ok) rows; ``ok`` False means the check failed and the exit code will be 1."""
    rows = []
    for name in REQUIRED:
        ok, found = _version(name)
        rows.append((f"package {name}", found, ok))
    try:
        import torch

        cuda = torch.cuda.is_available()
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else "none"
        rows.append(("GPUs", f"{torch.cuda.device_count()} ({names})" if cuda else "none: training runs on the CPU",
                     cuda or not require_gpu))
        bf16 = torch.cuda.is_bf16_supported() if cuda else True  # CPU bf16 autocast works (slow without AMX)
        rows.append(("bf16", "supported" if bf16 else "not supported on this GPU", True))
        rows.append(("fp16", "supported" if cuda else "CPU: fp16 requests run in fp32", True))
        rows.append(("CPU threads", str(torch.get_num_threads()), True))
    except ImportError:
        pass
    try:
        from accelerate.commands.config import default_config_file
    except ImportError:
        default_config_file = None
    if default_config_file:
        exists = Path(default_config_file).is_file()
        rows.append(("accelerate config", f"{default_config_file}" + ("" if exists else " (none: defaults; "
                     "see accelerate_configs/)"), True))
    launched = os.environ.get("ACCELERATE_CONFIG_FILE") or os.environ.get("WORLD_SIZE")
    if launched:
        rows.append(("launch", f"WORLD_SIZE={os.environ.get('WORLD_SIZE', '?')}", True))
    free = shutil.disk_usage(folder).free / 2**30
    rows.append((f"free disk at {Path(folder).resolve()}", f"{free:.1f} GiB", free >= MIN_FREE_GB))
    ok, found = _hub_answers()
    rows.append(("Hugging Face Hub", found + ("" if ok or require_hub else " (fine offline: no push/pull)"),
                 ok or not require_hub))
    token = bool(__import__("huggingface_hub").get_token()) if _version("huggingface_hub")[0] else False
    rows.append(("Hub token", "set (HF_TOKEN or login)" if token else "not set: push needs one", True))
    return rows


def report(require_gpu: bool = False, require_hub: bool = False) -> tuple[str, int]:
    from hfstage.reporting import format_table

    rows = checks(require_gpu, require_hub)
    table = format_table([("check", "finding", "ok")] + [(a, b, "yes" if ok else "NO") for a, b, ok in rows])
    failed = [a for a, _, ok in rows if not ok]
    verdict = f"\n{len(failed)} problem(s): {', '.join(failed)}" if failed else "\nready"
    return table + verdict, 1 if failed else 0
