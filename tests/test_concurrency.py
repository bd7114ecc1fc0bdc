"""Four processes write one org at once while a fifth follows its change feed."""

import multiprocessing
from pathlib import Path
from typing import Any

from flask import Flask

from portal.orgs import changes, records, store
from tests.conftest import orgs_dir

WRITERS = 4
WRITES = 150


def _writer(folder: str, number: int, results: Any) -> None:
    """Create records, update some, delete some; report what this writer left."""
    org = store.open_org(folder, "sales")
    live: dict[str, str] = {}
    versions: list[int] = []
    for i in range(WRITES):
        record = records.create_record(org, "competitor", {"name": f"w{number}-{i}"})
        live[record["competitorid"]] = record["name"]
        versions.append(record["versionnumber"])
        if i % 5 == 4:
            target = sorted(live)[i % len(live)]
            updated = records.update_record(org, "competitor", target, {"name": f"u{number}-{i}"})
            live[target] = updated["name"]
            versions.append(updated["versionnumber"])
        if i % 7 == 6:
            target = sorted(live)[0]
            versions.append(records.delete_record(org, "competitor", target))
            del live[target]
    org.close()
    results.put((number, live, versions))


def _follower(folder: str, done: Any, results: Any) -> None:
    """Follow the change feed while the writers write; report the replica it built."""
    org = store.open_org(folder, "sales")
    replica: dict[str, str] = {}
    version = 0
    reads = 0
    while True:
        finished = done.is_set()  # read before the page: a page after done sees everything
        page = changes.changes_since(org, "competitor", version, limit=37)
        reads += 1
        for change in page.changes:
            if change.deleted:
                replica.pop(change.id, None)
            else:
                replica[change.id] = change.record["name"]  # type: ignore[index]
        version = page.next_version
        if finished and not page.more:
            break
    org.close()
    results.put(("follower", replica, reads))


def test_concurrent_writers_keep_every_write_and_the_feed_misses_none(
        app: Flask, sales_org: store.OrgDb) -> None:
    folder = str(orgs_dir(app))
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    done = ctx.Event()
    follower = ctx.Process(target=_follower, args=(folder, done, results))
    follower.start()
    writers = [ctx.Process(target=_writer, args=(folder, n, results)) for n in range(WRITERS)]
    for p in writers:
        p.start()
    outcomes = {}
    for _ in writers:
        number, live, versions = results.get(timeout=240)
        outcomes[number] = (live, versions)
    for p in writers:
        p.join(timeout=60)
        assert p.exitcode == 0
    done.set()
    _, replica, reads = results.get(timeout=120)
    follower.join(timeout=60)
    assert follower.exitcode == 0

    expected: dict[str, str] = {}
    all_versions: list[int] = []
    for live, versions in outcomes.values():
        expected.update(live)
        # Each writer saw its own versions strictly increase.
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
        all_versions.extend(versions)
    assert len(set(all_versions)) == len(all_versions), "a versionnumber was given twice"

    stored = {r["competitorid"]: r["name"] for r in sales_org.db.table("competitor").rows}
    assert stored == expected  # every write kept
    assert replica == expected  # the feed, followed during the writes, missed nothing
    assert reads > 1
    assert max(all_versions) == store.current_version(sales_org.db)
    assert Path(folder, "sales.db").exists()
