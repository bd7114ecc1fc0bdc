"""Read-ahead of pages in a thread (portal.backends.prefetch)."""

import threading
import time
from collections.abc import Iterator
from contextlib import closing

import pytest

from portal.backends.prefetch import interleaved, prefetched


def _pages(read: list[int]) -> Iterator[int]:
    """Ten pages, each noted in `read` when the source gives it."""
    for n in range(10):
        read.append(n)
        yield n


def test_prefetched_keeps_order_and_reads_at_most_depth_pages_ahead() -> None:
    read: list[int] = []
    pages = _pages(read)
    seen = []
    for page in prefetched(pages, depth=1):
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


def test_interleaved_keeps_each_sources_order_and_opens_at_most_streams_at_once() -> None:
    opened: list[str] = []
    open_now = []
    most = [0]

    def pages(name: str) -> Iterator[int]:
        open_now.append(name)
        most[0] = max(most[0], len(open_now))
        try:
            for n in range(5):
                time.sleep(0.001)
                yield n
        finally:
            open_now.remove(name)

    def sources() -> Iterator[tuple[str, Iterator[int]]]:
        for name in "abcdef":
            opened.append(name)
            yield name, pages(name)

    got: dict[str, list[int]] = {}
    ended = []
    for key, page in interleaved(sources(), streams=3):
        if page is None:
            ended.append(key)
        else:
            got.setdefault(key, []).append(page)
    assert got == {name: [0, 1, 2, 3, 4] for name in "abcdef"}
    assert sorted(ended) == list("abcdef")
    assert most[0] <= 3 and opened == list("abcdef")


def test_interleaved_raises_a_readers_error_and_stops_every_reader() -> None:
    closed: list[str] = []

    def pages(name: str) -> Iterator[int]:
        try:
            n = 0
            while True:
                if name == "b" and n == 2:
                    raise RuntimeError("the server went away")
                yield n
                n += 1
        finally:
            closed.append(name)

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="went away"), \
            closing(interleaved(iter([(n, pages(n)) for n in "abc"]), streams=3)) as stream:
        for _ in stream:
            time.sleep(0.001)
    assert sorted(closed) == ["a", "b", "c"]  # every source closed: connections released
    assert threading.active_count() == before


def test_a_prefetched_source_under_interleaved_is_not_read_ahead_twice() -> None:
    read: list[int] = []
    pages = _pages(read)
    seen = []
    for _, page in interleaved(iter([("a", prefetched(pages))]), streams=1):
        if page is not None:
            time.sleep(0.02)  # the caller is slow: the reader waits for it
            # One page handed over, one in the queue, one read and not yet queued:
            # the backend's own read-ahead thread would hold one more.
            assert len(read) - len(seen) <= 3
            seen.append(page)
    assert seen == list(range(10))
