"""Read ahead: fetch the next page from the server while the caller writes this one.

A download alternates network waits (the server building a page) with local
work (writing the page to SQLite). Both release the GIL for most of their
time, so running the reads in a thread overlaps them. Only the reading
thread touches the backend while the pages are iterated. The caller closes
the iterator when it stops early (`contextlib.closing`): that stops the
reader and waits for it, so the backend's session is free again afterwards.

`interleaved` does the same for several sources at once (a run's entities):
one reading thread per open source, their pages handed to the one caller (the
one writer of the client's file) through one bounded queue, so memory stays
bounded by the number of streams, whatever the size of the org.
"""

import queue
import threading
from collections.abc import Generator, Iterator
from typing import TypeVar

K = TypeVar("K")
T = TypeVar("T")

_DONE = object()
_POLL_S = 0.2  # how often a blocked reader checks whether the caller has stopped
# Set in reader threads: a source read by one already (a backend's own `prefetched`
# pages under `interleaved`) is not read ahead again, so pages in memory stay few.
_local = threading.local()


class _Failed:
    """An exception raised by the reading thread, handed to the caller."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Reader(threading.Thread):
    """Iterates one source, putting (key, page) on a queue, then (key, _DONE); closes it."""

    def __init__(self, key: object, pages: Iterator[object],
                 handoff: "queue.Queue[tuple[object, object]]", stop: threading.Event) -> None:
        super().__init__(name="prefetch", daemon=True)
        self.key, self.pages, self.handoff, self.stop = key, pages, handoff, stop

    def put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.handoff.put((self.key, item), timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        _local.reading = True
        try:
            for page in self.pages:
                if not self.put(page):
                    return
            self.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - the caller re-raises it
            self.put(_Failed(exc))
        finally:
            close = getattr(self.pages, "close", None)
            if close is not None:
                close()


def prefetched(pages: Iterator[T], depth: int = 1) -> Generator[T, None, None]:
    """Iterate `pages` in a thread, at most `depth` pages ahead of the caller."""
    if getattr(_local, "reading", False):  # iterated by a reader thread already
        yield from pages
        return
    for _, page in _interleave(iter([(None, pages)]), 1, depth):
        if page is not _DONE:
            yield page  # type: ignore[misc]


def interleaved(sources: Iterator[tuple[K, Iterator[T]]], streams: int,
                depth: int = 1) -> Generator[tuple[K, T | None], None, None]:
    """Pages of up to `streams` sources at once, as (key, page); (key, None) when one ends.

    Each source's pages come in their order; a new source is taken from
    `sources` (in the caller's thread) when one ends. At most `depth` pages wait
    for the caller, besides one read and one being read per stream: memory is
    bounded by the streams, not by the sources' size.
    """
    for key, page in _interleave(sources, streams, depth):
        yield key, (None if page is _DONE else page)  # type: ignore[misc]


def _interleave(sources: Iterator[tuple[K, Iterator[T]]], streams: int,
                depth: int) -> Generator[tuple[K, object], None, None]:
    handoff: queue.Queue[tuple[object, object]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    readers: list[_Reader] = []

    def start_next() -> bool:
        source = next(sources, None)
        if source is None:
            return False
        reader = _Reader(source[0], source[1], handoff, stop)
        readers.append(reader)
        reader.start()
        return True

    try:
        open_ = sum(start_next() for _ in range(max(1, streams)))
        while open_:
            key, item = handoff.get()
            if isinstance(item, _Failed):
                raise item.error
            yield key, item  # type: ignore[misc]
            if item is _DONE:
                open_ -= 1
                open_ += start_next()
    finally:
        stop.set()
        for reader in readers:
            reader.join()
