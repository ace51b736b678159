"""Resolve the `device` setting (auto picks CUDA when present, else the CPU) and check that the
device can run what the config asks of it."""

from __future__ import annotations

import logging

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


# train.compile=auto compiles CPU runs of at least this many steps: compiling costs 20-60 s and
# saves ~3-4 ms of every ~17 ms step, so it pays back after ~10k steps (README "Speed").
AUTO_COMPILE_STEPS = 20_000


def use_compile(setting: bool | str, device: torch.device, steps: int) -> bool:
    """Whether to torch.compile the training step: train.compile=true (checked: fails here, before
    anything is written, when it cannot work) or false as given; auto compiles runs of at least
    AUTO_COMPILE_STEPS steps on the CPU when a C++ compiler is present (CUDA runs stay eager:
    compiling there needs triton and is not measured here)."""
    if setting == "auto":
        if device.type != "cpu" or steps < AUTO_COMPILE_STEPS:
            return False
        try:
            check_compile_support(device)
        except GrokError:
            logging.getLogger(__name__).warning(
                "train.compile=auto: no C++ compiler found, so this run trains eagerly (install "
                "g++ or set CXX for ~1.3x steps/s)")
            return False
        return True
    if setting:
        check_compile_support(device)
    return bool(setting)


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
