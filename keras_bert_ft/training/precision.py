"""`mixed_precision="auto"` (the default): bfloat16 where the hardware computes it natively,
float32 elsewhere.

bfloat16 halves the bytes every matmul moves and keeps float32's exponent range, so it
needs no loss scaling. `auto` takes it where the chip has bfloat16 units: TPUs, NVIDIA
GPUs of compute capability 8.0 and up (Ampere on), and CPUs with AVX512-BF16 or AMX; it
keeps float32 elsewhere, where bfloat16 would be converted in software. (On a 2-core
CPU with AVX512-BF16, docs/measurements.md: `mixed_bfloat16` trained 1.25x faster at
the same accuracy.) `kbft doctor` prints the choice and why.

`KBFT_CPU_BFLOAT16=0` in the environment keeps `auto` at float32 on such CPUs (the same
numbers on every CPU, e.g. to compare runs across machines; the test suite sets it).
TPUs and GPUs are not affected; an explicit `mixed_precision` always wins.
"""

import os

from typing import Iterable, Optional, Sequence, Tuple

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPU_BF16_ENV = "KBFT_CPU_BFLOAT16"


def cpu_bfloat16_allowed() -> bool:
    """False when `KBFT_CPU_BFLOAT16` is 0 / false / no / off: `auto` stays float32 on CPUs."""
    return os.environ.get(CPU_BF16_ENV, "").strip().lower() not in ("0", "false", "no", "off")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> Tuple[str, ...]:
    """This CPU's feature flags (Linux); empty where /proc/cpuinfo is not there."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return tuple(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ()


def gpu_capabilities() -> Tuple[Tuple[int, int], ...]:
    """Compute capability (major, minor) of each GPU TensorFlow sees."""
    import tensorflow as tf
    out = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu) or {}
        out.append(tuple(details.get("compute_capability") or (0, 0)))
    return tuple(out)


def choose_precision(*, tpu: bool, gpus: Sequence[Tuple[int, int]],
                     flags: Iterable[str], cpu_bfloat16: bool = True) -> Tuple[str, str]:
    """(policy, reason) for this hardware: the rule `auto` follows."""
    if tpu:
        return "mixed_bfloat16", "TPUs compute in bfloat16 natively"
    if gpus:
        oldest = min(gpus)
        if oldest >= (8, 0):
            return "mixed_bfloat16", (f"GPU compute capability {oldest[0]}.{oldest[1]} "
                                      "(8.0 and up run bfloat16 natively)")
        return "float32", (f"GPU compute capability {oldest[0]}.{oldest[1]} has no native "
                           "bfloat16 (8.0 and up do); mixed_float16 is this GPU's option")
    native = sorted(set(flags) & set(CPU_BF16_FLAGS))
    if native and not cpu_bfloat16:
        return "float32", (f"this CPU computes bfloat16 natively ({', '.join(native)}), but "
                           f"{CPU_BF16_ENV}=0 keeps float32")
    if native:
        return "mixed_bfloat16", f"this CPU computes bfloat16 natively ({', '.join(native)})"
    return "float32", ("this CPU has neither AVX512-BF16 nor AMX, so bfloat16 would be "
                       "converted in software")


def _cpu_only(strategy) -> bool:
    """A strategy placed on CPUs only (say `strategy="cpu"` on a GPU machine)."""
    try:
        devices = strategy.extended.worker_devices
    except (AttributeError, RuntimeError):  # the default strategy: whatever TF picks
        return False
    return bool(devices) and all("CPU" in d.upper() for d in devices)


def precision_here(*, tpu: bool, gpus: Sequence[Tuple[int, int]]) -> Tuple[str, str]:
    """`choose_precision` with this machine's CPU flags and `KBFT_CPU_BFLOAT16`."""
    return choose_precision(tpu=tpu, gpus=gpus, flags=cpu_flags(),
                            cpu_bfloat16=cpu_bfloat16_allowed())


def auto_precision(strategy=None) -> Tuple[str, str]:
    """(policy, reason) on this machine, for `strategy` (None: what TensorFlow sees)."""
    from keras_bert_ft.training.tpu import is_tpu
    on_tpu = strategy is not None and is_tpu(strategy)
    cpu = on_tpu or (strategy is not None and _cpu_only(strategy))
    return precision_here(tpu=on_tpu, gpus=() if cpu else gpu_capabilities())


def resolve_precision(requested: Optional[str], strategy=None) -> str:
    """The policy a run builds with: `auto` resolved here; unset (runs saved before
    `auto`) is float32."""
    if requested == "auto":
        return auto_precision(strategy)[0]
    return requested or "float32"
