"""Read ahead: fetch the next page from the server while the caller writes this one.

A download alternates network waits (the server building a page) with local
work (writing the page to SQLite). Both release the GIL for most of their
time, so running the reads in a thread overlaps them. Only the reading
thread touches the backend while the pages are iterated. The caller closes
the iterator when it stops early (`contextlib.closing`): that stops the
reader and waits for it, so the backend's session is free again afterwards.
"""

import queue
import threading
from collections.abc import Generator, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()
_POLL_S = 0.2  # how often a blocked reader checks whether the caller has stopped


class _Failed:
    """An exception raised by the reading thread, handed to the caller."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(pages: Iterator[T], depth: int = 1) -> Generator[T, None, None]:
    """Iterate `pages` in a thread, at most `depth` pages ahead of the caller."""
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for page in pages:
                if not put(page):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - the caller re-raises it
            put(_Failed(exc))
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read, name="prefetch", daemon=True)
    reader.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        reader.join()
