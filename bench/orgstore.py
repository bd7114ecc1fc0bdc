"""Org store benchmark: 100k records written through the data layer and read back via the
change feed, against a raw sqlite3 executemany insert of the same rows in the same run.

Run: make bench (or .venv/bin/python bench/orgstore.py [--records N]).
"""

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.accounts import account_row  # noqa: E402
from portal.orgs import changes, records, schema, store  # noqa: E402
from portal.orgs.metadata import Attribute, Entity  # noqa: E402

BATCH = 5000


def make_rows(count: int) -> list[dict]:
    """Rows of a 10-attribute entity, as a sync page or an import would bring them."""
    return [{**account_row(i), "modifiedon": "2026-01-01T00:00:00Z"} for i in range(count)]


def entity() -> Entity:
    """The benchmark's entity: account with the row's attributes."""
    return Entity("account", "Account", primarynameattribute="name", attributes=[
        Attribute("name", "string", maxlength=160), Attribute("accountnumber", "string"),
        Attribute("telephone1", "string"), Attribute("emailaddress1", "string"),
        Attribute("address1_city", "string"), Attribute("revenue", "money"),
        Attribute("numberofemployees", "integer"), Attribute("creditonhold", "boolean"),
    ])


def raw_insert(path: Path, rows: list[dict], *, keyed: bool) -> float:
    """Baseline: the same rows with one executemany in one transaction.

    keyed=False: a bare table, no indexes (the floor of SQLite itself);
    keyed=True: the same keys as an entity table (GUID primary key, unique
    versionnumber index), which every record store keyed by id pays.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    columns = list(rows[0])
    key = " PRIMARY KEY" if keyed else ""
    conn.execute(f"CREATE TABLE account ({columns[0]} TEXT{key}, {', '.join(columns[1:])}, "
                 "versionnumber INTEGER)")
    if keyed:
        conn.execute("CREATE UNIQUE INDEX account_version ON account (versionnumber)")
    tuples = [(*row.values(), n) for n, row in enumerate(rows)]
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO account VALUES ({', '.join('?' * (len(columns) + 1))})",
                     tuples)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def store_write(folder: Path, rows: list[dict]) -> tuple[float, store.OrgDb]:
    """Ours: save_records in pages of BATCH, as the sync engine writes a page."""
    org = store.create_org_file(folder, "bench")
    schema.add_entity(org, entity())
    start = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        records.save_records(org, "account", rows[i:i + BATCH])
    return time.perf_counter() - start, org


def feed_read(org: store.OrgDb) -> tuple[float, int]:
    """Read the change feed from version 0 to the end, in pages of 1,000."""
    start = time.perf_counter()
    version, count = 0, 0
    while True:
        page = changes.changes_since(org, "account", version, limit=1000)
        count += len(page.changes)
        version = page.next_version
        if not page.more:
            break
    return time.perf_counter() - start, count


def main() -> None:
    """Run the benchmark and print records/s and ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    count = parser.parse_args().records
    rows = make_rows(count)
    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_insert(Path(tmp) / "raw.db", rows, keyed=False)
        keyed = raw_insert(Path(tmp) / "keyed.db", rows, keyed=True)
        ours, org = store_write(Path(tmp), rows)
        read, read_count = feed_read(org)
        org.close()
    assert read_count == count
    print(f"org store benchmark, {count:,} records of 10 attributes")
    print(f"  raw executemany, bare table      : {count / raw:>10,.0f} records/s")
    print(f"  raw executemany, same keys       : {count / keyed:>10,.0f} records/s")
    print(f"  save_records (pages of {BATCH:,})    : {count / ours:>10,.0f} records/s"
          f"  = {ours / raw:.2f}x the bare raw time, {ours / keyed:.2f}x the keyed raw time"
          " (goal <= 2x)")
    print(f"  change feed read (pages of 1,000): {count / read:>10,.0f} records/s"
          f"  = {read / raw:.2f}x the bare raw insert time")


if __name__ == "__main__":
    main()
