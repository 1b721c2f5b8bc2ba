"""The one place a device is chosen, decided once per process (encoder actor, Serve replica, evaluation)."""

from __future__ import annotations

import torch

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(device: str | None = None, num_gpus: float | None = None) -> torch.device:
    """The caller's explicit device, else CPU when the process was given no GPU share, else CUDA when visible."""
    if device:
        return torch.device(device)
    if num_gpus is not None and num_gpus <= 0:
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 autocast on GPU, plain fp32 on CPU; fp32: never autocast; bf16/fp16: always."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if dtype == "fp32":
        return None
    if dtype not in AUTOCAST:
        raise ValueError(f"encoder.dtype={dtype!r}: expected auto | fp32 | bf16 | fp16")
    return AUTOCAST[dtype]
