"""`make faults`: sync between two real portals under faults, and one table of figures.

    python -m tests.fault_suite [--seed N] [--points N] [--backend resco|dynamics]
                                [--out docs/RELIABILITY.md]

Portal A (gunicorn) hosts the server org behind tests/fault_proxy.py; portal
B's jobs run on real `rq worker` processes (the Procfile's worker class) that
the suite kills with SIGKILL. After each scenario the client is synced until
both orgs hold the same records (at most MAX_RUNS runs), then:

* records — records compared (every entity of the sales template, both sides);
* lost — records whose values differ or that one side lacks, plus writes made
  that the server's version counter does not show;
* doubled — increments of the server's version counter beyond the writes made
  (a write applied twice), plus records the server holds twice;
* converged in — sync runs after the last fault until the orgs were identical.

"Lost" and "doubled" come from the two orgs' files and the server's counter,
never from the engine's own counts. Kill points are chosen at random from the
seed, and printed. `--backend dynamics` runs every scenario through the
`dynamics` backend against portal A's Dataverse root over TLS (the proxy
speaking TLS with A's test certificate), as `tests/test_sync_faults.py` does.
"""

import argparse
import logging
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from portal.db import get_db
from portal.orgs import records, store
from portal.orgs.templates import sales
from portal.queue import connect_redis
from portal.sync import runs
from tests.fault_proxy import FaultProxy
from tests.portal_process import PortalProcess, Tls
from tests.redis_server import RedisServer
from tests.sync_helpers import Side, seed_sales, snapshot

ROOT = Path(__file__).resolve().parent.parent
SALES = [e.logicalname for e in sales()]
FAST = {"SYNC_HTTP_RETRIES": 1, "SYNC_PAGE_SIZE": 50, "SYNC_UPLOAD_BATCH": 20}
MAX_RUNS = 5
ACCOUNTS = 400
BACKENDS = ("resco", "dynamics")
BACKEND = "resco"  # of every Pair: main's --backend


@dataclass
class Figures:
    """One row of the table."""

    scenario: str
    runs: int = 0
    points: int = 0
    records: int = 0
    lost: int = 0
    doubled: int = 0
    converged_in: int | None = None  # runs after the last fault; None: did not converge


class Pair:
    """A server org behind a fault proxy and a connected client org, with their counters."""

    def __init__(self, folder: Path, redis_url: str, name: str, client_redis: str | None = None,
                 accounts: int = ACCOUNTS) -> None:
        self.server = Side(folder / f"{name}-a", redis_url)
        self.server.create_org("srv")
        with self.server.org("srv") as a:
            seed_sales(a, accounts=accounts)
        if BACKEND == "resco":
            self.portal = PortalProcess(folder / f"{name}-a", redis_url)
            self.proxy = FaultProxy(self.portal.url)
            self.server.url = self.proxy.url + "/odata/v4/srv/"
        else:  # the Dataverse root over TLS; the workers trust its CA by the environment
            tls = Tls.make(folder / f"{name}-tls")
            os.environ["REQUESTS_CA_BUNDLE"] = str(tls.ca_file)
            self.portal = PortalProcess(folder / f"{name}-a", redis_url, tls=tls)
            self.proxy = FaultProxy(self.portal.url, tls=tls)
            self.server.url = self.proxy.url + "/dataverse/srv"
        self.client_redis = client_redis or redis_url
        self.redis = connect_redis(self.client_redis)
        self.client = Side(folder / f"{name}-b", self.client_redis, config=FAST,
                           backend=BACKEND)
        self.client.create_org("cli", template=None)
        self.connection_id = self.client.connect("cli", self.server.url)
        self.writes = 0  # writes that must each change the server exactly once
        self._lock = threading.Lock()
        self.version0 = 0
        self.runs = 0

    def connect(self) -> None:
        """Run the connect job; the server's counter counts from here."""
        self.client.queue(self.redis, self.connection_id, "connect")
        self.client.work(self.redis)
        self.version0 = self.version()

    def version(self) -> int:
        """The server org's version counter."""
        with self.server.org("srv") as a:
            return store.current_version(a.db)

    def ids(self, entity: str = "account") -> list[str]:
        """The server's record ids of an entity."""
        with self.server.org("srv") as a:
            pk = a.entity(entity).primaryidattribute
            return sorted(r[pk] for r in a.db.table(entity).rows)

    def server_writes(self, rng: random.Random, count: int) -> None:
        """Updates made on the server itself."""
        with self.server.org("srv") as a:
            for record_id in rng.sample(self.ids(), count):
                records.update_record(a, "account", record_id, {"name": f"srv {rng.random()}"})
        self.writes += count

    def client_writes(self, rng: random.Random, count: int, creates_only: bool = False) -> None:
        """Offline transactions: creates, updates and deletes mixed (or creates only, where
        the server writes too: no conflicts, so each must reach the server once)."""
        with self.client.org("cli") as b:
            existing = sorted(r["accountid"] for r in b.db.table("account").rows)
            touched = [] if creates_only else rng.sample(existing, min(len(existing), count // 2))
            for i in range(count):
                kind = i % 4
                if kind in (0, 1) or not touched:
                    records.create_record(b, "account", {"name": f"cli {i} {rng.random()}"})
                elif kind == 2:
                    records.update_record(b, "account", touched.pop(), {"name": f"upd {i}"})
                else:
                    records.delete_record(b, "account", touched.pop())
        with self._lock:
            self.writes += count

    def sync(self) -> str:
        """One sync run on an in-process worker; its status."""
        self.client.queue(self.redis, self.connection_id, "sync")
        self.client.work(self.redis)
        self.runs += 1
        with self.client.app.app_context():
            return str(runs.list_runs(get_db(), self.client.connection(self.connection_id)
                                      .org_id, limit=1)[0]["status"])

    def differences(self) -> tuple[int, int, int]:
        """(records compared, records differing or missing on one side, extra on the server)."""
        with self.server.org("srv") as a, self.client.org("cli") as b:
            theirs, ours = snapshot(a, SALES), snapshot(b, SALES)
        compared = differ = extra = 0
        for name in SALES:
            compared += len(theirs.get(name, {}))
            for key in set(theirs.get(name, {})) | set(ours.get(name, {})):
                if theirs.get(name, {}).get(key) != ours.get(name, {}).get(key):
                    differ += 1
                    if key not in ours.get(name, {}):
                        extra += 1
        return compared, differ, extra

    def converge(self, figures: Figures) -> Figures:
        """Sync until identical (at most MAX_RUNS runs); fill in the figures from both orgs."""
        self.proxy.flaky = 0.0
        self.proxy.down = False
        for attempt in range(MAX_RUNS + 1):
            compared, differ, extra = self.differences()
            if differ == 0 and self._pending() == 0:
                figures.converged_in = attempt
                break
            if attempt < MAX_RUNS:
                self.sync()
        compared, differ, extra = self.differences()
        applied = self.version() - self.version0
        figures.records = compared
        figures.lost = differ - extra + max(0, self.writes - applied)
        figures.doubled = extra + max(0, applied - self.writes)
        figures.runs = self.runs
        return figures

    def _pending(self) -> int:
        with self.client.org("cli") as b:
            return int(b.db.execute("SELECT count(*) FROM _transactions WHERE status = 'pending'")
                       .fetchone()[0]) if b.db.table("_transactions").exists() else 0

    def stop(self) -> None:
        """Stop the proxy, the server portal and the client's Redis client."""
        self.proxy.stop()
        self.portal.stop()
        self.redis.close()


# --- killing real workers ------------------------------------------------------

def worker_process(client: Side) -> subprocess.Popen[bytes]:
    """A real `rq worker` for the client side, in its own session (killed as a group)."""
    env = {**os.environ, "PORTAL_INSTANCE_PATH": str(client.instance),
           "REDIS_URL": client.redis_url, "PORTAL_ALLOW_PRIVATE_SERVERS": "true",
           **{f"PORTAL_{k}": str(v) for k, v in FAST.items()}}
    rq = str(Path(sys.executable).parent / "rq")
    return subprocess.Popen([rq, "worker", "-w", "jobs.worker.Worker", "--burst", "--url",
                             client.redis_url, "default"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def kill_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its work horse at once."""
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children")
    pids = [int(p) for p in children.read_text().split()] if children.exists() else []
    for pid in [*pids, worker.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait(10)


def wait_for(condition: Callable[[], bool], timeout: float = 120) -> bool:
    """Poll until the condition holds; False when it never did."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def recover(pair: Pair) -> None:
    """After a kill: the lock's TTL runs out, the dispatcher's pass, the resumed work."""
    lock = f"portal:lock:connection:{pair.connection_id}"
    wait_for(lambda: not pair.redis.exists(lock), 60)
    with pair.client.app.app_context():
        from jobs.sync import dispatch

        dispatch()
    pair.client.work(pair.redis)


def kill_points(folder: Path, redis_url: str, rng: random.Random, points: int) -> Figures:
    """SIGKILL of the client's worker at random points of connect, download, upload, metadata."""
    figures = Figures("SIGKILL of the client's worker", points=points)
    pair = Pair(folder, redis_url, "kill")
    chosen = []
    try:
        phases = ["connect"] + [rng.choice(["download", "upload", "metadata"])
                                for _ in range(points - 1)]
        for phase in phases:
            proxy = pair.proxy
            if phase == "connect":
                page = rng.randint(2, ACCOUNTS // FAST["SYNC_PAGE_SIZE"])
                proxy.hold_page = ("accounts", proxy.pages["accounts"] + page)
                pair.client.queue(pair.redis, pair.connection_id, "connect")
                point = f"connect, accounts page {page}"
            elif phase == "download":
                pair.server_writes(rng, 200)
                page = rng.randint(1, 3)
                proxy.hold_page = ("accounts", proxy.pages["accounts"] + page)
                pair.client.queue(pair.redis, pair.connection_id, "sync")
                point = f"download, accounts page {page}"
            elif phase == "upload":
                pair.client_writes(rng, 60, creates_only=True)
                batch = rng.randint(1, 3)
                proxy.hold_batch = proxy.batches + batch
                pair.client.queue(pair.redis, pair.connection_id, "sync")
                point = f"upload, batch {batch} applied, answer held"
            else:
                proxy.hold_page = ("EntityDefinitions", proxy.pages["EntityDefinitions"] + 1)
                pair.client.queue(pair.redis, pair.connection_id, "metadata")
                point = "metadata update, server metadata read"
            chosen.append(point)
            worker = worker_process(pair.client)
            if wait_for(proxy.holding.is_set, 120):
                kill_worker(worker)
            else:  # the job ended before the point: nothing to kill
                worker.wait(60)
                chosen[-1] += " (not reached)"
            proxy.hold_page, proxy.hold_batch = None, 0
            proxy.release()
            proxy.holding.clear()
            proxy._released.clear()
            pair.runs += 1
            recover(pair)
            if phase == "connect":
                pair.version0 = pair.version() - pair.writes
        figures = pair.converge(figures)
    finally:
        pair.stop()
    print("kill points (seeded): " + "; ".join(f"{i + 1}. {p}" for i, p in enumerate(chosen)))
    return figures


# --- the other scenarios ---------------------------------------------------------

def server_down(folder: Path, redis_url: str, rng: random.Random) -> Figures:
    """The server down while the client makes 1,000 offline transactions, then back."""
    figures = Figures("server down, 1,000 offline transactions", points=1)
    pair = Pair(folder, redis_url, "down")
    try:
        pair.connect()
        pair.proxy.down = True
        pair.client_writes(rng, 1000)
        pair.sync()
        return pair.converge(figures)
    finally:
        pair.stop()


def dropped_answers(folder: Path, redis_url: str, rng: random.Random) -> Figures:
    """Answers of $batch dropped by the proxy after the server applied them."""
    figures = Figures("answers dropped after the server applied them", points=3)
    pair = Pair(folder, redis_url, "drop")
    try:
        pair.connect()
        pair.client_writes(rng, 200)
        pair.proxy.drop_batch_answers = 3
        pair.sync()
        return pair.converge(figures)
    finally:
        pair.stop()


def flaky_server(folder: Path, redis_url: str, rng: random.Random) -> Figures:
    """10 % of requests answered 503, 429 (Retry-After) or not at all, while both sides write."""
    figures = Figures("flaky server (10 % 5xx / 429 / lost answers)")
    pair = Pair(folder, redis_url, "flaky")
    try:
        pair.connect()
        pair.proxy.rng = random.Random(rng.random())
        for _ in range(3):
            pair.client_writes(rng, 100, creates_only=True)
            pair.server_writes(rng, 50)
            pair.proxy.flaky = 0.10
            pair.sync()
        figures.points = pair.proxy.faults
        return pair.converge(figures)
    finally:
        pair.stop()


def redis_restarted(folder: Path, redis_url: str, rng: random.Random) -> Figures:
    """The client's Redis killed and started empty while a run is in flight."""
    figures = Figures("Redis restarted mid-run", points=1)
    own = RedisServer()
    pair = Pair(folder, redis_url, "redis", client_redis=own.url)
    worker = None
    try:
        pair.connect()
        pair.client_writes(rng, 100, creates_only=True)
        pair.server_writes(rng, 200)
        pair.client.queue(pair.redis, pair.connection_id, "sync")
        pair.proxy.hold_page = ("accounts", pair.proxy.pages["accounts"] + 2)
        worker = worker_process(pair.client)
        wait_for(pair.proxy.holding.is_set)
        own.restart()
        pair.proxy.hold_page = None
        pair.proxy.release()
        worker.wait(120)
        pair.runs += 1
        worker = None
        return pair.converge(figures)
    finally:
        if worker is not None:
            kill_worker(worker)
        pair.stop()
        own.stop()


def concurrent_writers(folder: Path, redis_url: str, rng: random.Random) -> Figures:
    """Four threads writing to the client org while it syncs."""
    figures = Figures("4 concurrent writers on the client during a sync", points=4)
    pair = Pair(folder, redis_url, "writers")
    try:
        pair.connect()
        pair.server_writes(rng, 100)
        seeds = [rng.random() for _ in range(4)]

        def writer(seed: float) -> None:
            pair.client_writes(random.Random(seed), 50, creates_only=True)

        threads = [threading.Thread(target=writer, args=(s,)) for s in seeds]
        for thread in threads:
            thread.start()
        pair.sync()
        for thread in threads:
            thread.join()
        return pair.converge(figures)
    finally:
        pair.stop()


def two_schedulers(folder: Path, redis_url: str, rng: random.Random) -> Figures:
    """Two dispatchers at once on a due schedule: one run, not two."""
    figures = Figures("two schedulers", points=2)
    pair = Pair(folder, redis_url, "sched")
    try:
        pair.connect()
        pair.server_writes(rng, 100)
        with pair.client.app.app_context():
            db = get_db()
            db.execute("UPDATE connections SET next_run_at = '2000-01-01T00:00:00Z'")
            db.conn.commit()
        enqueued: list[list[int]] = []
        apps = [Side(pair.client.instance, pair.client_redis, config=FAST) for _ in range(2)]

        def scheduler(side: Side) -> None:
            with side.app.app_context():
                from jobs.sync import dispatch

                enqueued.append(dispatch())

        threads = [threading.Thread(target=scheduler, args=(a,)) for a in apps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pair.client.work(pair.redis)
        pair.runs += sum(len(e) for e in enqueued)
        figures = pair.converge(figures)
        if sum(len(e) for e in enqueued) != 1:
            figures.doubled += sum(len(e) for e in enqueued) - 1
        return figures
    finally:
        pair.stop()


SCENARIOS = [server_down, dropped_answers, flaky_server, redis_restarted, concurrent_writers,
             two_schedulers]


def table(rows: list[Figures]) -> str:
    """The figures as one Markdown table."""
    lines = ["| scenario | runs | points | records | lost | doubled | converged in |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        converged = "not converged" if r.converged_in is None else f"{r.converged_in} run(s)"
        lines.append(f"| {r.scenario} | {r.runs} | {r.points} | {r.records} | {r.lost} | "
                     f"{r.doubled} | {converged} |")
    return "\n".join(lines)


def machine() -> str:
    """Where the suite ran, in one line."""
    cores = os.cpu_count()
    return (f"{platform.node()}, {platform.system()} {platform.release()}, {cores} cores, "
            f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}")


def main(argv: list[str] | None = None) -> int:
    """Run every scenario, print the table; exit 1 if anything was lost, doubled or stuck."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--points", type=int, default=20, help="SIGKILL points")
    parser.add_argument("--backend", choices=BACKENDS, default="resco",
                        help="the backend of the client's connections")
    parser.add_argument("--out", type=Path, help="write the printout into this Markdown file")
    args = parser.parse_args(argv)
    global BACKEND  # noqa: PLW0603 - one setting of the whole run, read by every Pair
    BACKEND = args.backend
    # The workers' logs (and the tracebacks of the runs each fault fails) are expected:
    # the table is the printout.
    logging.disable(logging.CRITICAL)
    rng = random.Random(args.seed)
    os.environ.setdefault("PORTAL_ALLOW_PRIVATE_SERVERS", "true")
    session_redis = RedisServer()
    folder = Path(tempfile.mkdtemp(prefix="faults"))
    started = time.monotonic()
    rows: list[Figures] = []
    try:
        print(f"fault suite, seed {args.seed}, {args.points} kill points, "
              f"backend {args.backend}")
        rows.append(kill_points(folder, session_redis.url, rng, args.points))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        for scenario in SCENARIOS:
            connect_redis(session_redis.url).flushdb()
            rows.append(scenario(folder, session_redis.url, rng))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        session_redis.stop()
        shutil.rmtree(folder, ignore_errors=True)
    elapsed = time.monotonic() - started
    printout = (f"Seed {args.seed}, {args.points} kill points, backend {args.backend}; "
                f"{elapsed:.0f} s on {machine()}, "
                f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n\n{table(rows)}\n")
    print()
    print(printout)
    if args.out:
        text = args.out.read_text() if args.out.exists() else ""
        marker = "<!-- fault suite printout -->"
        head = text.split(marker)[0] if marker in text else text
        args.out.write_text(head + marker + "\n" + printout)
    bad = [r for r in rows if r.lost or r.doubled or r.converged_in is None]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
