"""Ordered parallel map over a stream, with a bounded number of items in flight.

`ProcessPoolExecutor.map` submits the whole input at once; a corpus of millions of utterances
would then sit in memory. Here at most `jobs * IN_FLIGHT_PER_JOB` items are queued.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

IN_FLIGHT_PER_JOB = 4


def _init_worker() -> None:
    # each worker is one of `jobs` processes: torch's own thread pool would oversubscribe
    import torch

    torch.set_num_threads(1)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], jobs: int) -> Iterator[R]:
    """`fn(item)` for each item, in input order; `jobs <= 1` runs in this process.

    `fn` must be a module-level function (workers start fresh, by forkserver: forking a process
    that already runs torch threads can deadlock).
    """
    if jobs <= 1:
        yield from map(fn, items)
        return
    ctx = mp.get_context("forkserver")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker) as pool:
        pending: deque[Future[Any]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= jobs * IN_FLIGHT_PER_JOB:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
