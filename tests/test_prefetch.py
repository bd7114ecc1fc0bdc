"""Read-ahead of pages in a thread (portal.backends.prefetch)."""

import threading
import time
from collections.abc import Iterator
from contextlib import closing

import pytest

from portal.backends.prefetch import prefetched


def test_prefetched_keeps_order_and_reads_at_most_depth_pages_ahead() -> None:
    read: list[int] = []

    def pages() -> Iterator[int]:
        for n in range(10):
            read.append(n)
            yield n

    seen = []
    for page in prefetched(pages(), depth=1):
        time.sleep(0.02)  # the caller is slow: the reader waits for it
        # One page handed over, one waiting in the queue, one read and not yet queued.
        assert len(read) - len(seen) <= 3
        seen.append(page)
    assert seen == list(range(10))


def test_prefetched_raises_the_readers_error_in_the_caller() -> None:
    def pages() -> Iterator[int]:
        yield 1
        raise RuntimeError("the server went away")

    got = []
    with pytest.raises(RuntimeError, match="went away"):
        for page in prefetched(pages()):
            got.append(page)
    assert got == [1]


def test_prefetched_stops_its_reader_when_the_caller_stops() -> None:
    closed = threading.Event()

    def pages() -> Iterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    before = threading.active_count()
    with pytest.raises(ValueError), closing(prefetched(pages())) as stream:
        for page in stream:
            if page == 3:
                raise ValueError("the caller failed writing this page")
    assert closed.is_set()  # the source was closed, so its connection is released
    assert threading.active_count() == before
