"""Benchmarks (not tests): inference overhead of ASUKA over SD-1.5 inpainting, training throughput and MFU of the
three stages, and mask-generator speed. Entry point: ``python scripts/benchmark.py`` (see docs/benchmarks.md)."""
from asuka.benchmark.run import evaluate_targets, run_benchmark
from asuka.benchmark.timing import (
    PEAK_BF16_FLOPS,
    TimingStats,
    count_flops,
    mfu,
    peak_bf16_flops,
    summarize,
    synchronize,
    time_fn,
    time_runs,
)

__all__ = [
    "PEAK_BF16_FLOPS",
    "TimingStats",
    "count_flops",
    "evaluate_targets",
    "mfu",
    "peak_bf16_flops",
    "run_benchmark",
    "summarize",
    "synchronize",
    "time_fn",
    "time_runs",
]
