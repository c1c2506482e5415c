"""Wall-clock timing that a GPU cannot fool, summary statistics, and model-FLOPs utilisation.

CUDA kernels run asynchronously: a timer read right after a Python call measures the launch, not the work. Every
timed run is therefore bracketed by :func:`synchronize`. Medians (not means) are the headline figures, because a
shared machine produces one-sided outliers; the spread (min, max, inter-quartile range) is reported next to them so
a reader can tell a real difference from noise.
"""
from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

Clock = Callable[[], float]
# wall: elapsed time; cpu: this process's CPU time (all its threads), which other jobs on a shared machine do not
# inflate: with one thread, a stable figure where wall times swing several-fold
CLOCKS: dict[str, Clock] = {"wall": time.perf_counter, "cpu": time.process_time}
Progress = Callable[[int, int, Mapping[str, float]], None]

# Dense bf16 tensor-core peaks (no sparsity) from NVIDIA's data sheets, matched against torch.cuda.get_device_name.
# The first matching pattern wins, so the PCIe H100 (756 TFLOP/s) is listed before the SXM part (989 TFLOP/s).
PEAK_BF16_FLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H100", "PCIE"), 756e12),
    (("H100",), 989e12),   # H100 SXM / HBM3 ("NVIDIA H100 80GB HBM3")
    (("H200",), 989e12),   # same compute die as H100 SXM, more and faster memory
    (("GH200",), 989e12),
    (("A100",), 312e12),
)


def peak_bf16_flops(device_name: str | None) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU by name, or None when the device is not in the table (MFU is then null)."""
    if not device_name:
        return None
    name = device_name.upper()
    for patterns, peak in PEAK_BF16_FLOPS:
        if all(p in name for p in patterns):
            return peak
    return None


def mfu(flops_per_step: float | None, seconds_per_step: float | None, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s (``flops_per_step / seconds_per_step``) over the device peak.

    None when any input is unknown or not positive, so a missing peak never turns into a made-up number.
    """
    if not flops_per_step or not seconds_per_step or not peak_flops:
        return None
    if flops_per_step <= 0 or seconds_per_step <= 0 or peak_flops <= 0:
        return None
    return float(flops_per_step) / float(seconds_per_step) / float(peak_flops)


@dataclass
class TimingStats:
    """Summary of repeated durations in seconds; ``times`` keeps the raw runs for the JSON."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    iqr: float
    mean: float
    n: int
    times: list[float] = field(default_factory=list)

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        """Flat ``{prefix}median`` ... keys, the layout of the benchmark JSON."""
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def summarize(durations: Sequence[float]) -> TimingStats:
    """Median, min, max and quartiles (linear interpolation between order statistics, numpy's default)."""
    values = [float(d) for d in durations]
    if not values:
        raise ValueError("summarize needs at least one duration")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"non-finite duration in {values}")
    ordered = sorted(values)
    q1, q3 = _quantile(ordered, 0.25), _quantile(ordered, 0.75)
    return TimingStats(
        median=statistics.median(ordered),
        min=ordered[0],
        max=ordered[-1],
        q1=q1,
        q3=q3,
        iqr=q3 - q1,
        mean=statistics.fmean(ordered),
        n=len(ordered),
        times=values,
    )


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Quantile of sorted data with linear interpolation (``numpy.percentile`` method "linear")."""
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued GPU work, so the clock measures the work and not its launch; a no-op on CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(
    fns: Mapping[str, Callable[[], Any]],
    warmup: int,
    repeats: int,
    device: torch.device | str | None = None,
    clock: Clock = time.perf_counter,
    progress: Progress | None = None,
) -> dict[str, TimingStats]:
    """Time several functions, interleaved: ``warmup`` untimed rounds, then ``repeats`` timed rounds.

    In each round every function runs once (in the given order), each run bracketed by :func:`synchronize`. On a
    machine whose load changes over time, interleaving makes the functions see the same conditions, which matters
    more for a ratio than for either figure. ``clock`` is injectable so tests can feed known times; ``progress``
    gets (round, rounds, {name: seconds}) after every round (warm-up rounds have empty times).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rounds = max(0, warmup) + repeats
    for done in range(max(0, warmup)):
        for fn in fns.values():
            fn()
        synchronize(device)
        if progress is not None:
            progress(done + 1, rounds, {})
    durations: dict[str, list[float]] = {name: [] for name in fns}
    for done in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = clock()
            fn()
            synchronize(device)
            durations[name].append(clock() - start)
        if progress is not None:
            progress(max(0, warmup) + done + 1, rounds, {name: values[-1] for name, values in durations.items()})
    return {name: summarize(values) for name, values in durations.items()}


def print_round(done: int, rounds: int, times: Mapping[str, float]) -> None:
    """Progress on stderr, one line per round, so a long CPU run is never silent."""
    what = ", ".join(f"{name} {seconds:.3g} s" for name, seconds in times.items()) or "warm-up"
    print(f"round {done}/{rounds}: {what}", file=sys.stderr, flush=True)


def time_fn(
    fn: Callable[[], Any],
    warmup: int,
    repeats: int,
    device: torch.device | str | None = None,
    clock: Clock = time.perf_counter,
) -> TimingStats:
    """:func:`time_runs` for one function."""
    return time_runs({"fn": fn}, warmup, repeats, device, clock)["fn"]


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker: every FLOP is booked under "Global"."""

    parents = frozenset({"Global"})

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _cpu_attention_formulas() -> dict[Any, Any]:
    """PyTorch's FLOP formulas for scaled-dot-product attention, also for the CPU flash kernel, which
    ``FlopCounterMode`` does not count on its own (the CUDA kernels it counts): without this, CPU counts miss every
    attention product (5.6% of an SD-1.5 UNet forward at 256 px)."""
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    mapping = {}
    for cpu_op, counted in (("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention"),
                            ("_scaled_dot_product_flash_attention_for_cpu_backward",
                             "_scaled_dot_product_flash_attention_backward")):
        if hasattr(aten, cpu_op) and getattr(aten, counted) in flop_registry:
            formula = flop_registry[getattr(aten, counted)]
            mapping[getattr(aten, cpu_op)] = getattr(formula, "__wrapped__", formula)  # FlopCounterMode re-wraps
    return mapping


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; forward and any backward run inside it),
    counted by ``torch.utils.flop_counter.FlopCounterMode``. Optimizer updates and element-wise ops are not counted,
    which is the usual convention for MFU.

    The per-module breakdown is switched off: its tracker puts hooks on the autograd graph, and those refuse a
    ``torch.autograd.grad`` inside the step (the decoder stage's adaptive GAN weight). Only the total is needed.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops())


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a fresh peak-memory window on CUDA (CPU has no resettable counter)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> dict[str, float | None]:
    """Peak memory since :func:`reset_peak_memory`: CUDA allocator peak in MiB; on CPU the process's peak RSS.

    The RSS peak covers the whole process life (model building included), not only the timed steps, so it is an
    upper bound and reported under its own key.
    """
    if torch.device(device).type == "cuda":
        return {
            "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_memory_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20,
            "peak_rss_mib": None,
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_mib = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    return {"peak_memory_mib": None, "peak_memory_reserved_mib": None, "peak_rss_mib": rss_mib}
