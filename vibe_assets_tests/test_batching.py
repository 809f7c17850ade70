"""prefetch_batches: order, errors, and how far ahead it loads."""

from __future__ import annotations

import threading
import time

import pytest

from vibe_assets.batching import chunked, prefetch_batches


def test_batches_keep_order_and_report_errors() -> None:
    def load(i: int) -> int:
        if i == 4:
            raise ValueError("bad item")
        return i * 10

    batches = list(prefetch_batches(list(range(7)), load, batch_size=3, workers=2))
    assert [b.items for b in batches] == [[0, 1, 2], [3, 5], [6]]
    assert [b.values for b in batches] == [[0, 10, 20], [30, 50], [60]]
    assert [(i, str(e)) for i, e in batches[1].errors] == [(4, "bad item")]


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_loads_at_most_prefetch_batches_ahead(prefetch: int) -> None:
    """While the consumer holds batch k, items of batches beyond k + prefetch are never
    loaded, and with prefetch >= 1 the next batch does load meanwhile."""
    started: list[int] = []
    lock = threading.Lock()

    def load(i: int) -> int:
        with lock:
            started.append(i)
        return i

    items = list(range(12))

    def furthest_batch() -> int:
        with lock:
            return max(started) // 2

    batches = prefetch_batches(items, load, batch_size=2, workers=2, prefetch=prefetch)
    for k, batch in enumerate(batches):
        assert batch.items == [2 * k, 2 * k + 1]
        expected = min(k + prefetch, 5)
        deadline = time.monotonic() + 5.0  # the loaders run beside this consumer
        while furthest_batch() < expected and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.02)  # and nothing beyond that gets loaded meanwhile
        assert furthest_batch() == expected


def test_chunked_rejects_empty_batches() -> None:
    with pytest.raises(ValueError):
        list(chunked([1, 2], 0))
    with pytest.raises(ValueError):
        list(prefetch_batches([1], lambda i: i, 1, prefetch=-1))


def test_stopping_early_drops_the_prefetched_loads_not_yet_started() -> None:
    """Ctrl-C in the consumer must not wait for every prefetched load (on CPU a RAW decode takes
    up to a second; two batches of 32 ahead would hold the stop for tens of seconds)."""
    loaded: list[int] = []

    def load(i: int) -> int:
        time.sleep(0.05)
        loaded.append(i)
        return i

    batches = prefetch_batches(list(range(40)), load, batch_size=8, workers=2, prefetch=2)
    assert next(batches).items == list(range(8))
    batches.close()  # what an exception in the consumer's loop does to the generator
    # batch 1 done; of the two prefetched batches (16 loads) at most the 2 running ones finish
    assert len(loaded) <= 8 + 2 + 2, loaded
