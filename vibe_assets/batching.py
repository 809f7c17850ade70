"""Batches with prefetching: load and preprocess the next batches while the model runs.

Memory stays flat with folder size: at most ``prefetch + 1`` batches are in flight.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from vibe_assets.settings import cpu_budget

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Batch(Generic[T, R]):
    """One batch: ``items`` that loaded, their ``values`` (same order), and ``errors``
    ``[(item, exception)]`` for items whose loader raised."""

    items: list[T] = field(default_factory=list)
    values: list[R] = field(default_factory=list)
    errors: list[tuple[T, Exception]] = field(default_factory=list)


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of length ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for i in range(0, len(items), size):
        yield items[i : i + size]


def prefetch_batches(
    items: Sequence[T],
    load: Callable[[T], R],
    batch_size: int,
    workers: int | None = None,
    prefetch: int = 2,
) -> Iterator[Batch[T, R]]:
    """Yield batches of ``load(item)`` results, loaded in a thread pool of ``workers`` threads
    (default: one per usable CPU, :func:`~vibe_assets.settings.cpu_budget`), ``prefetch``
    batches ahead of the consumer.

    With ``prefetch`` >= 1, the next batches load while the consumer works on the current one
    (the host prepares while the model computes). With 0, a batch is loaded, by all workers,
    only when the consumer asks for it: nothing loads beside the consumer.

    A loader exception is reported in ``Batch.errors`` and never stops the other items. When
    the consumer stops early (closes the generator, e.g. on Ctrl-C), loads not yet started are
    cancelled.
    """
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    batches = chunked(items, batch_size)
    pool = ThreadPoolExecutor(max_workers=workers or cpu_budget())
    try:
        pending: deque[tuple[Sequence[T], list[Future[R]]]] = deque()

        def submit_next() -> None:
            chunk = next(batches, None)
            if chunk is not None:
                pending.append((chunk, [pool.submit(load, item) for item in chunk]))

        for _ in range(prefetch):
            submit_next()
        while True:
            submit_next()  # keeps ``prefetch`` batches loading beyond the one about to be used
            if not pending:
                return
            chunk, futures = pending.popleft()
            batch: Batch[T, R] = Batch()
            for item, future in zip(chunk, futures, strict=True):
                try:
                    batch.values.append(future.result())
                    batch.items.append(item)
                except Exception as exc:
                    batch.errors.append((item, exc))
            yield batch
    finally:
        # The consumer stopped early (an error, Ctrl-C): drop the prefetched batches that have
        # not started, instead of decoding them all before returning; at most one item per
        # worker is still finishing.
        pool.shutdown(wait=True, cancel_futures=True)
