"""Wall-clock timing of a callable: warm-up first, then the median of several repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    # Median of the timed repeats, in seconds.
    median_s: float
    # Every timed repeat, in seconds, in the order they ran.
    samples_s: tuple[float, ...]


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work: without it a GPU timing measures only the kernel launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int,
    repeats: int,
    max_time_s: float = float("inf"),
) -> Timing:
    """Run `fn` `warmup` times untimed, then up to `repeats` times timed; report the median.

    Timed runs stop early once they add up to `max_time_s` (at least one always runs): a run
    of several seconds averages over thousands of kernels already, and a few of them would
    make the benchmark take hours on a CPU.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: list[float] = []
    while len(samples) < repeats and sum(samples) < max_time_s:
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return Timing(statistics.median(samples), tuple(samples))
