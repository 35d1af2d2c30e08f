"""Device, precision, threads and seeding for model stages (CUDA with bf16 autocast when present)."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class DeviceInfo:
    """Where a stage computes and with which autocast dtype (None = full fp32)."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    threads: int

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA, a no-op on CPU."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        """Short text for sidecars: device, precision, threads."""
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        prec = str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "fp32"
        return f"{name} ({prec}, {self.threads} threads)"


def select_device(runtime: dict[str, Any], local_rank: int | None = None) -> DeviceInfo:
    """Resolve ``runtime.device`` (auto|cpu|cuda) and ``runtime.threads`` (0 = all cores).

    ``local_rank`` (a rank of a multi-process stage) picks the CUDA device ``cuda:local_rank``.
    """
    from cmml.errors import ConfigError

    want = runtime["device"]
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params.yaml: key 'runtime.device' is 'cuda' but no CUDA device is available")
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    threads = runtime["threads"] or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if use_cuda:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if local_rank is None:
            return DeviceInfo(torch.device("cuda"), dtype, threads)
        torch.cuda.set_device(local_rank)
        return DeviceInfo(torch.device("cuda", local_rank), dtype, threads)
    return DeviceInfo(torch.device("cpu"), None, threads)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
