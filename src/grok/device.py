"""Resolve the `device` setting (auto picks CUDA when present, else the CPU) and check that the
device can run what the config asks of it."""

from __future__ import annotations

import torch

from grok.errors import GrokError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GrokError(f"device={name} but CUDA is not available here; use device=auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GrokError("device=mps but MPS is not available here; use device=auto or cpu")
    return torch.device(name)


def check_compile_support(device: torch.device) -> None:
    """torch.compile on the CPU writes and builds C++ kernels: fail before training, with the fix,
    rather than with a compiler traceback at the first step."""
    if device.type != "cpu":
        return
    from torch._inductor import cpp_builder  # private, but the compiler search torch itself runs

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:
        raise GrokError("train.compile=true needs a C++ compiler on the CPU and none was found "
                        f"({type(exc).__name__}); install g++ (or set CXX), or run eagerly with "
                        "train.compile=false") from None
