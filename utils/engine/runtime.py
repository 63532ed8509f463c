"""Where a run executes: device, precision, memory layout, threads, and what the CPU can do.

The machines of this study differ between sessions (an AVX2-only EPYC, an AVX-512-bf16 EPYC and an
AMX Xeon have all been seen), so every record states the CPU's capabilities and the precision used.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from utils.engine.errors import UsageError

_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
THREADS_ENV = "HOMEWORK_THREADS"
MAX_THREADS = 1024      # far above any machine this runs on; beyond it torch/OpenMP fail obscurely


class RuntimeUnavailable(RuntimeError):
    """The requested device or precision does not exist on this machine (a user error)."""


@lru_cache(maxsize=1)
def cpu_capabilities() -> dict:
    """The CPU's model name, the SIMD/matrix flags that decide bf16 speed, and torch's dispatch level."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch builds
        capability = "unknown"
    return {"model": model, "flags": {f: f in flags for f in _CPU_FLAGS}, "torch_capability": capability,
            "bf16_kernels": cpu_supports_bf16(), "bf16_native": has_native_bf16(flags)}


def cpu_supports_bf16() -> bool:
    """oneDNN runs bf16 here at all: on any AVX-512 CPU, natively or by emulation."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def has_native_bf16(flags: "set[str]") -> bool:
    """``/proc/cpuinfo`` ``flags`` name bf16 instructions (AVX512_BF16 or AMX-BF16), not only the
    AVX-512 that oneDNN's emulation needs.

    oneDNN also accepts bf16 on AVX-512 CPUs without them (an Ice Lake Xeon, say), where it converts
    in software: measured on such a 2-core Xeon with :func:`utils.analysis.paired_timing.time_training_steps`,
    a ResNet-20 training step (batch 128) took 560 ms under bf16 autocast and 340 ms in fp32. So
    ``auto`` precision asks for the instructions.
    """
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str               # "fp32" | "bf16"
    channels_last: bool
    threads: int

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=self.device.type, enabled=False)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def describe(self) -> dict:
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
                "threads": self.threads, "torch": torch.__version__, "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(), "cpu_capabilities": cpu_capabilities()}


def threads_from_env() -> int | None:
    """``$HOMEWORK_THREADS`` as a thread count, ``None`` when unset or empty (= all cores).

    Raises :class:`UsageError` for anything but a whole number in 1..MAX_THREADS, so a typo is
    reported before any work starts instead of surfacing as a traceback inside torch.
    """
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_THREADS:
        raise UsageError(f"{THREADS_ENV}={text!r} is not a number of CPU threads between 1 and {MAX_THREADS}; "
                         f"set e.g. {THREADS_ENV}=2, or unset it to use all cores")
    return value


def resolve_runtime(device: str = "auto", precision: str = "auto", threads: int | None = None) -> Runtime:
    """Pick device and precision. ``auto`` precision = bf16 autocast where the hardware has it natively
    (a GPU with bf16, a CPU with AVX512_BF16 or AMX); ``bf16`` also takes oneDNN's emulation."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeUnavailable("--device cuda was requested but CUDA is not available on this machine")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    if dev.type == "cpu":
        # HOMEWORK_THREADS lets a second job share the machine without oversubscribing it.
        torch.set_num_threads(threads or threads_from_env() or os.cpu_count() or 1)
    bf16_ok = torch.cuda.is_bf16_supported() if dev.type == "cuda" else cpu_supports_bf16()
    if precision == "bf16" and not bf16_ok:
        raise RuntimeUnavailable(f"--precision bf16 was requested but {dev.type} has no bf16 support")
    bf16_fast = bf16_ok and (dev.type == "cuda" or cpu_capabilities()["bf16_native"])
    prec = "bf16" if precision == "bf16" or (precision == "auto" and bf16_fast) else "fp32"
    # channels_last (NHWC) lets oneDNN / cuDNN pick their fastest conv kernels (measured on the
    # 2-core AVX2 CPU: results/benchmarks/levers.json, variant "nchw").
    return Runtime(dev, prec, channels_last=True, threads=torch.get_num_threads())


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
