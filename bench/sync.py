"""Sync benchmarks P1, P7, P9, P5, P8, P3 (issue 16): each one line, a ratio to a baseline
measured in the same run, its goal, and whether it is met.

* P1: initial sync of 100k records (account, contact, lead, appointment; each with a lookup)
  from portal A (gunicorn) to a client org over loopback, vs a raw SQLite copy of the rows.
* P7: the same through a proxy that delays every answer by 100 ms, vs P1's rate.
* P9: a run with no changes on the 100k client: requests sent (counted by a proxy) and
  time, vs one GET of the service document through the same proxy.
* P5: peak RSS of the client syncing 1M records vs 100k.
* P8: 8 client orgs syncing one 25k-record server org at once: aggregate rate vs one alone;
  a write to the server org before each run, so that no run reads pages the server kept.
* P3: instant upload, a write to a client org (its own portal, a real RQ worker, Redis)
  until it is visible in the server org's file: p50 and p99 of 200 writes.

Beside P1, two more lines: the same initial sync through the `dynamics` backend against
the org's Dataverse Web API root over HTTPS (a trustme test CA, tokens from the portal's
own authority by the password flow), and the initial sync of accounts from a real SAP CAP
server (tests/cap) through the `odata` backend, each as a rate and a ratio to P1's.

Each sync runs in a child process (spawned), so its peak RSS is its own.
Run: make bench (or .venv/bin/python bench/sync.py [--records N] [--million N]
[--only P1,P8]).
"""

import argparse
import multiprocessing
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.accounts import account_row  # noqa: E402
from bench.delay_proxy import DelayProxy  # noqa: E402
from portal import create_app, crypto  # noqa: E402
from portal.backends.dynamics import DynamicsBackend  # noqa: E402
from portal.backends.odata_v4 import ODataV4Backend  # noqa: E402
from portal.backends.resco import RescoBackend  # noqa: E402
from portal.config import SETTING  # noqa: E402
from portal.db import get_db  # noqa: E402
from portal.orgs import records, registry, store, transactions  # noqa: E402
from portal.queue import enqueue_run  # noqa: E402
from portal.sync import connections, engine, metadata, runs  # noqa: E402
from portal.sync.connections import EntitySettings  # noqa: E402
from tests.portal_process import PortalProcess, Tls  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

EMAIL, PASSWORD = "bench@example.com", "bench-pass-1"
REPEAT = 3  # loopback initial syncs and raw copies timed; the best of each is compared
ENTITIES = ["account", "contact", "lead", "appointment"]
DELAY_S = 0.100  # P7's added latency per answer
CLIENTS, CLIENT_RECORDS = 8, 25_000  # P8
WRITES = 200  # P3
WAIT_S = 2.0  # P3: how long a write is waited for before the next one goes


def verdict(met: bool) -> str:
    """The end of a P-line."""
    return "met" if met else "not met"


def seed(org: store.OrgDb, count: int) -> None:
    """count/4 records of each entity; contacts, leads and appointments point at accounts."""
    quarter = count // 4
    chunk = 5000
    for start in range(0, quarter, chunk):
        ids = range(start, min(start + chunk, quarter))
        accounts = [{**account_row(i), "industrycode": 1 + i % 8} for i in ids]
        account_of = {i: a["accountid"] for i, a in zip(ids, accounts, strict=True)}
        records.save_records(org, "account", accounts)
        records.save_records(org, "contact", [
            {"contactid": str(uuid.UUID(int=10**9 + i, version=4)), "lastname": f"Last {i}",
             "firstname": "First", "emailaddress1": f"c{i}@example.com", "jobtitle": "Buyer",
             "parentcustomerid": account_of[i]} for i in ids])
        records.save_records(org, "lead", [
            {"leadid": str(uuid.UUID(int=2 * 10**9 + i, version=4)), "lastname": f"Lead {i}",
             "subject": "Interested", "companyname": f"Company {i}", "leadsourcecode": 1 + i % 4,
             "estimatedvalue": i * 2.5, "parentaccountid": account_of[i]} for i in ids])
        records.save_records(org, "appointment", [
            {"activityid": str(uuid.UUID(int=3 * 10**9 + i, version=4)),
             "subject": f"Meeting {i}", "location": "Office",
             "scheduledstart": "2026-12-01T09:00:00Z", "scheduledend": "2026-12-01T10:00:00Z",
             "scheduleddurationminutes": 60, "regardingobjectid": account_of[i]} for i in ids])


# --- a client sync in a child process ----------------------------------------------

BACKENDS = {"resco": RescoBackend, "dynamics": DynamicsBackend, "odata": ODataV4Backend}
Credentials = tuple[str, str]


def client_sync(client_dir: str, url: str, result: Any, go: Any = None, kind: str = "resco",
                credentials: Credentials = (EMAIL, PASSWORD)) -> None:
    """In a child process: connect-like first sync (metadata + download), or a later run.

    With `go` (an Event), the child says it is ready and waits for it before syncing,
    so that several children start at once. Puts (start, end, downloaded, peak RSS MB,
    CPU seconds of the sync itself, every thread).
    `kind` "odata": a SAP CAP server at `url`, its accounts read with `credentials`.
    """
    path = Path(client_dir)
    path.mkdir(parents=True, exist_ok=True)
    org = store.open_org(path, "cli", create=True)
    if go is not None:
        result.put("ready")
        go.wait()
    started, cpu = time.time(), _cpu_s()
    try:
        backend = BACKENDS[kind](url, *credentials, allow_private=True)
        if not org.entities():
            metadata.update_client_metadata(org, backend.read_metadata(), set())
            transactions.set_client(org, True)
        plan = engine.Plan([EntitySettings(e, True, True, None)
                            for e in (["accounts"] if kind == "odata" else ENTITIES)],
                           page_size=SETTING["SYNC_PAGE_SIZE"].default)
        run = engine.Run(org, backend, plan)
        engine.upload(run)
        engine.download(run)
        backend.close()
        org.close()
    except Exception as exc:  # noqa: BLE001 - counted as an error by the parent
        result.put(f"error: {exc.__class__.__name__}: {exc}")
        return
    result.put((started, time.time(), run.result.total("downloaded"),
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _cpu_s() - cpu))


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu_s(portal: PortalProcess) -> float:
    """CPU seconds used so far by a portal's gunicorn master and workers (Linux /proc)."""
    master, total = portal.process.pid, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(entry.name) == master or int(fields[1]) == master:
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _ctx() -> Any:
    return multiprocessing.get_context("spawn")


def sync_in_child(client_dir: Path, url: str, kind: str = "resco",
                  credentials: Credentials = (EMAIL, PASSWORD)) -> tuple[float, int, float]:
    """(seconds, records downloaded, peak RSS MB) of one sync run in a child process."""
    outcome = syncs_at_once([client_dir], url, kind, credentials)[0]
    if isinstance(outcome, str):
        raise RuntimeError(outcome)
    start, end, downloaded, rss, _ = outcome
    return end - start, downloaded, rss


def syncs_at_once(client_dirs: list[Path], url: str, kind: str = "resco",
                  credentials: Credentials = (EMAIL, PASSWORD)) -> list[Any]:
    """Sync several clients from `url` at once, each in its own process; their outcomes."""
    ctx = _ctx()
    go = ctx.Event()
    queues = [ctx.Queue() for _ in client_dirs]
    children = [ctx.Process(target=client_sync, args=(str(d), url, q, go, kind, credentials))
                for d, q in zip(client_dirs, queues, strict=True)]
    for child in children:
        child.start()
    for child, q in zip(children, queues, strict=True):
        assert _get(child, q) == "ready"
    go.set()
    outcomes = [_get(child, q) for child, q in zip(children, queues, strict=True)]
    for child in children:
        child.join()
    return outcomes


def _get(child: Any, q: Any) -> Any:
    while True:
        try:
            return q.get(timeout=1)
        except Empty:
            if not child.is_alive():
                return f"error: the sync child exited with code {child.exitcode}"


def raw_copy(source: Path, target: Path) -> float:
    """Baseline: the same rows read from the server's file and inserted into another file."""
    start = time.perf_counter()
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target, isolation_level=None)
    dst.execute("PRAGMA journal_mode=WAL")
    dst.execute("PRAGMA synchronous=NORMAL")
    dst.execute("BEGIN")
    for name in ENTITIES:
        columns = [r[1] for r in src.execute(f"PRAGMA table_info([{name}])")]
        dst.execute(f"CREATE TABLE [{name}] ({', '.join(columns)})")
        rows = src.execute(f"SELECT * FROM [{name}]")
        dst.executemany(f"INSERT INTO [{name}] VALUES ({', '.join('?' * len(columns))})", rows)
    dst.execute("COMMIT")
    src.close()
    dst.close()
    return time.perf_counter() - start


def dynamics_initial_sync(tmp: Path, instance: Path) -> tuple[float, int]:
    """(seconds, records) of P1's initial sync through the dynamics backend, over TLS."""
    tls = Tls.make(tmp / "tls")
    os.environ["REQUESTS_CA_BUNDLE"] = str(tls.ca_file)  # the children trust the test CA
    dataverse = PortalProcess(instance, "unix://" + str(tmp / "none.sock"), tls=tls)
    try:
        seconds, downloaded, _ = sync_in_child(tmp / "d-big", f"{dataverse.url}/dataverse/big",
                                               "dynamics")
    finally:
        dataverse.stop()
        del os.environ["REQUESTS_CA_BUNDLE"]
    return seconds, downloaded


def cap_initial_sync(folder: Path, count: int) -> tuple[float, int]:
    """(seconds, records) of the initial sync of `count` accounts from a real CAP server."""
    from tests.cap_server import running_cap_server

    with running_cap_server(max_page_size=5000) as cap:
        http = requests.Session()
        http.auth = cap.auth
        for start in range(0, count, 200):  # one atomic change set per 200 (CAP limits bodies)
            body = {"requests": [
                {"id": str(n), "atomicityGroup": "g", "method": "POST", "url": "Accounts",
                 "headers": {"content-type": "application/json"},
                 "body": {"name": f"Account {n}", "employees": n % 5000, "revenue": n * 1.5}}
                for n in range(start, min(start + 200, count))]}
            assert http.post(cap.url + "$batch", json=body).ok
        seconds, downloaded, _ = sync_in_child(folder, cap.url, "odata", cap.auth)
    assert downloaded == count, (downloaded, count)
    return seconds, downloaded


# --- P3: instant upload through a client portal, Redis and a worker ---------------------

def instant_upload(tmp: Path, server_url: str, server_file: Path, writes: int) -> list[float]:
    """Seconds from each API write to the client org until the server org's file has it."""
    redis_server = RedisServer()
    instance = tmp / "instant"
    env = {"PORTAL_INSTANCE_PATH": str(instance), "REDIS_URL": redis_server.url,
           "PORTAL_ALLOW_PRIVATE_SERVERS": "true", "PYTHONWARNINGS": "ignore"}
    app = create_app({"INSTANCE_PATH": instance, "REDIS_URL": redis_server.url,
                      "ALLOW_PRIVATE_SERVERS": True})
    portal = worker = None
    worker_log = open(os.environ.get("BENCH_WORKER_LOG", os.devnull), "wb")  # noqa: SIM115
    try:
        with app.app_context():
            db = get_db()
            registry.create_org(db, store.orgs_path(app), "cli", email=EMAIL,
                                password=PASSWORD, template=None)
            connection = connections.create_connection(
                db, crypto.load_key(instance), registry.get_org(db, "cli")["id"],
                backend="resco", url=server_url, username=EMAIL, password=PASSWORD,
                write_offline=False)
            run_id, _ = runs.request_run(db, connection.id, connection.org_id, "connect", "cli")
        from redis import Redis
        from rq import SimpleWorker

        redis = Redis.from_url(redis_server.url)
        enqueue_run(redis, "connect", connection.id, run_id, "cli")
        with app.app_context():
            SimpleWorker(["default"], connection=redis).work(burst=True)
            status = connections.get_connection(get_db(), connection.id)
        assert status.status == "connected", status.error
        redis.close()
        worker = subprocess.Popen(
            [sys.executable, "-m", "rq.cli", "worker", "-w", "jobs.worker.Worker", "--url",
             redis_server.url, "default"], cwd=ROOT, env={**os.environ, **env},
            stdout=worker_log, stderr=subprocess.STDOUT)
        portal = PortalProcess(instance, redis_server.url, env=env)
        session = requests.Session()
        session.auth = (EMAIL, PASSWORD)
        accounts = portal.odata_root("cli") + "accounts"
        session.get(accounts + "?$top=1").raise_for_status()
        server = sqlite3.connect(server_file)
        latencies: list[float] = []
        pending: dict[str, float] = {}  # writes not seen on the server yet -> sent at

        def seen() -> None:
            for name, sent in list(pending.items()):
                if server.execute("SELECT 1 FROM account WHERE name = ?", [name]).fetchone():
                    del pending[name]
                    latencies.append(time.perf_counter() - sent)

        for n in range(writes + 5):
            name = f"instant {n} {uuid.uuid4()}"
            start = time.perf_counter()
            answer = session.post(accounts, json={"name": name})
            if answer.status_code != 201:
                raise RuntimeError(f"{answer.status_code} {answer.text}: "
                                   f"{portal.log_path.read_text()[-3000:]}")
            if n >= 5:  # the first writes warm the worker and the portal up
                pending[name] = start
            # The next write goes when this one is seen, or after WAIT_S: a write the
            # upload missed must not stop the others.
            while name in pending and time.perf_counter() - start < WAIT_S:
                time.sleep(0.002)
                seen()
        deadline = time.perf_counter() + WAIT_S
        while pending and time.perf_counter() < deadline:
            time.sleep(0.01)
            seen()
        latencies.extend(float("inf") for _ in pending)  # never seen
        server.close()
        return latencies
    finally:
        if portal is not None:
            portal.stop()
        if worker is not None:
            worker.terminate()
            worker.wait(10)
        worker_log.close()
        redis_server.stop()


MEASURES = ("P1", "P7", "P9", "P5", "P8", "P3")
NEEDS_P1 = {"P7", "P9"}  # P7 is a ratio to P1's rate, P9 syncs P7's client again


def main() -> None:  # noqa: PLR0915 - one benchmark after another, in order
    """Run the benchmarks (all, or those --only names) and print their P-lines."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--million", type=int, default=1_000_000, help="P5's large org")
    parser.add_argument("--each", type=int, default=CLIENT_RECORDS, help="P8's server org")
    parser.add_argument("--writes", type=int, default=WRITES, help="P3's writes")
    parser.add_argument("--only", default=",".join(MEASURES),
                        help="comma-separated measures to run, e.g. P1,P8 (P7 and P9 run P1)")
    args = parser.parse_args()
    only = {m.strip().upper() for m in args.only.split(",") if m.strip()}
    unknown = only - set(MEASURES)
    if unknown:
        parser.error(f"--only: unknown measure {sorted(unknown)[0]} (measures: "
                     f"{', '.join(MEASURES)})")
    if "P5" in only and "P1" not in only:
        parser.error("--only: P5 compares with P1's client, name P1 too")
    runs_p1 = bool(only & ({"P1"} | NEEDS_P1))
    big, million, each = args.records, args.million, args.each
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bs", dir="/tmp") as folder:
        tmp = Path(folder)
        instance = tmp / "a"
        app = create_app({"INSTANCE_PATH": instance})
        orgs = store.orgs_path(app)
        seeded = {}
        wanted = [("big", big, runs_p1), ("million", million, "P5" in only),
                  ("many", each, "P8" in only), ("instant", 100, "P3" in only)]
        with app.app_context():
            for name, count, _ in (w for w in wanted if w[2]):
                start = time.perf_counter()
                registry.create_org(get_db(), orgs, name, email=EMAIL,
                                    password=PASSWORD, template="sales")
                with store.open_org(orgs, name) as org:
                    seed(org, count)
                seeded[name] = time.perf_counter() - start
        portal = PortalProcess(instance, "unix://" + str(tmp / "none.sock"))
        lines = []
        try:
            rss_big = 0.0
            if runs_p1:
                p1_lines, rss_big = p1_p7_p9(tmp, instance, orgs, portal, big, only)
                lines += p1_lines
            if "P5" in only:
                lines += p5(tmp, portal, million, seeded, rss_big, big)
            if "P8" in only:
                lines += p8(tmp, portal, each)
            if "P3" in only:
                lines += p3(tmp, portal, orgs, args.writes)
        finally:
            portal.stop()
    print(f"sync benchmark ({', '.join(m for m in MEASURES if m in only)}), "
          f"{time.perf_counter() - begun:.0f} s in all (seeding the server orgs "
          f"{sum(seeded.values()):.0f} s of it); page size {SETTING['SYNC_PAGE_SIZE'].default:,}; "
          f"server page cache {page_cache_state()}")
    for line in lines:
        print(line)


def page_cache_state() -> str:
    """"on" or "off", as the portal processes of this run read PORTAL_PAGE_CACHE."""
    return "off" if os.environ.get("PORTAL_PAGE_CACHE", "true").lower() == "false" else "on"


def p1_p7_p9(tmp: Path, instance: Path, orgs: Path, portal: PortalProcess, big: int,
             only: set[str]) -> tuple[list[str], float]:
    """P1 (with the dynamics and CAP lines), and P7 and P9 when asked for: their lines,
    and the peak RSS of P1's client (P5's baseline)."""
    # P1. Best of three for both: the machine is shared, and the best run is the
    # one least disturbed by others.
    raws = [raw_copy(orgs / "big.db", tmp / f"raw{n}.db") for n in range(REPEAT)]
    firsts = [sync_in_child(tmp / f"b-big{n}", portal.odata_root("big"))
              for n in range(REPEAT)]
    raw, (first, downloaded, rss_big) = min(raws), min(firsts)
    assert downloaded == big, downloaded
    p1 = raw / first
    lines = [
        f"P1 initial sync of {big:,} records ({', '.join(ENTITIES)}) over loopback: "
        f"{big / first:,.0f} records/s (best of {', '.join(f'{t[0]:.2f}' for t in firsts)} s) "
        f"vs raw SQLite copy {big / raw:,.0f} records/s (best of "
        f"{', '.join(f'{t:.2f}' for t in raws)} s) = {p1:.2f}; goal >= 0.6: "
        f"{verdict(p1 >= 0.6)}"]
    if "P1" in only:
        # Beside P1: the same org through the dynamics backend, and accounts from CAP.
        dynamics_s, dynamics_downloaded = dynamics_initial_sync(tmp, instance)
        cap_s, cap_records = cap_initial_sync(tmp / "b-cap", big // 10)
        lines += [
            f"   the same through the dynamics backend (Dataverse root, TLS): "
            f"{dynamics_downloaded / dynamics_s:,.0f} records/s ({dynamics_downloaded:,} "
            f"records in {dynamics_s:.2f} s) = "
            f"{first / dynamics_s * dynamics_downloaded / big:.2f} of P1's resco rate",
            f"   accounts from SAP CAP through the odata backend: {cap_records / cap_s:,.0f} "
            f"records/s ({cap_records:,} in {cap_s:.2f} s) = "
            f"{cap_records / cap_s / (big / first):.2f} of P1's resco rate"]
    if not only & NEEDS_P1:
        return lines, rss_big
    # P7: the same through 100 ms of latency per answer.
    proxy = DelayProxy(portal.url, DELAY_S)
    try:
        root = proxy.url + "/odata/v4/big/"
        delayed = [sync_in_child(tmp / f"b-slow{n}", root) for n in range(2)]
        # P9: a run without changes of a client synced through the proxy (its
        # delta links lead there), counted by the proxy, now without delay.
        proxy.delay_s = 0
        before = proxy.requests
        p9_s, p9_downloaded, _ = sync_in_child(tmp / "b-slow0", root)
        p9_requests = proxy.requests - before
        service_doc = []
        for _ in range(5):
            start = time.perf_counter()
            requests.get(root, auth=(EMAIL, PASSWORD), timeout=30).raise_for_status()
            service_doc.append(time.perf_counter() - start)
    finally:
        proxy.stop()
    p7_s, p7_downloaded, _ = min(delayed)
    assert p7_downloaded == big, p7_downloaded
    p7 = first / p7_s
    assert p9_downloaded == 0, p9_downloaded
    doc_s = statistics.median(service_doc)
    if "P7" in only:
        lines.append(
            f"P7 the same through a proxy delaying every answer {DELAY_S * 1000:.0f} ms: "
            f"{big / p7_s:,.0f} records/s (best of {', '.join(f'{t[0]:.2f}' for t in delayed)} "
            f"s) = {p7:.2f} of P1's rate; goal >= 0.7: {verdict(p7 >= 0.7)}")
    if "P9" in only:
        lines.append(
            f"P9 no-change run on {big:,} records: {p9_requests} requests for {len(ENTITIES)} "
            f"entities ({p9_requests / len(ENTITIES):.2f} per entity) in {p9_s:.3f} s = "
            f"{p9_s / doc_s:.1f}x one GET of the service document ({doc_s * 1000:.1f} ms); "
            f"goal <= 1 request per entity: {verdict(p9_requests <= len(ENTITIES))}")
    return lines, rss_big


def p5(tmp: Path, portal: PortalProcess, million: int, seeded: dict[str, float],
       rss_big: float, big: int) -> list[str]:
    """P5: peak RSS of a 1M-record initial sync vs P1's client."""
    p5_s, p5_downloaded, rss_million = sync_in_child(tmp / "b-million",
                                                     portal.odata_root("million"))
    assert p5_downloaded == million, p5_downloaded
    ratio = rss_million / rss_big
    return [f"P5 peak RSS of the client: {rss_million:.0f} MB for {million:,} records "
            f"(initial sync {p5_s:.1f} s, server org seeded in {seeded['million']:.0f} s) vs "
            f"{rss_big:.0f} MB for {big:,} = {ratio:.2f}x; goal <= 1.2x: "
            f"{verdict(ratio <= 1.2)}"]


def p8(tmp: Path, portal: PortalProcess, each: int) -> list[str]:
    """P8: one client alone (best of 3), then CLIENTS at once (best of 2), from the same
    server org. Before each run a write to the server org (an account saved unchanged)
    makes every page the server kept unusable: no run reads pages an earlier one built."""
    many = portal.odata_root("many")
    account = many + f"accounts({account_row(0)['accountid']})"

    def touch() -> None:
        requests.patch(account, json={"name": account_row(0)["name"]}, auth=(EMAIL, PASSWORD),
                       timeout=30).raise_for_status()

    alones = []
    for n in range(REPEAT):
        touch()
        server_before = server_cpu_s(portal)
        outcome = syncs_at_once([tmp / f"p8-alone{n}"], many)[0]
        if isinstance(outcome, str):
            raise RuntimeError(outcome)
        assert outcome[2] == each, outcome
        alones.append((outcome[1] - outcome[0], outcome[4], server_cpu_s(portal) - server_before))
    alone_s, alone_cpu, alone_server = min(alones)
    runs, lines, errors = [], [], 0
    for run in range(2):
        touch()
        server_before = server_cpu_s(portal)
        outcomes = syncs_at_once([tmp / f"p8-{run}-{n}" for n in range(CLIENTS)], many)
        server = server_cpu_s(portal) - server_before
        good = [o for o in outcomes if not isinstance(o, str) and o[2] == each]
        errors += len(outcomes) - len(good)
        lines += [f"  P8 client failed: {bad}" for bad in outcomes if bad not in good]
        if good:
            runs.append((max(o[1] for o in good) - min(o[0] for o in good), len(good),
                         sum(o[4] for o in good), server))
    together_s, done, clients_cpu, server_cpu = min(runs) if runs else (1e9, 0, 0.0, 0.0)
    p8 = (done * each / together_s) / (each / alone_s)
    lines.append(
        f"P8 {CLIENTS} clients syncing {each:,} records each from one server org at "
        f"once: {done * each / together_s:,.0f} records/s (best of "
        f"{', '.join(f'{r[0]:.2f}' for r in runs)} s; CPU in it: clients' syncs "
        f"{clients_cpu:.2f} s, server {server_cpu:.2f} s) vs one alone {each / alone_s:,.0f} "
        f"records/s (best of {', '.join(f'{a[0]:.2f}' for a in alones)} s; CPU: client "
        f"{alone_cpu:.2f} s, server {alone_server:.2f} s) = "
        f"{p8:.2f}, {errors} errors ({os.cpu_count()} cores); goal >= 1.5, 0 errors: "
        f"{verdict(p8 >= 1.5 and errors == 0)}")
    return lines


def p3(tmp: Path, portal: PortalProcess, orgs: Path, writes: int) -> list[str]:
    """P3: instant upload latency, p50 and p99."""
    latencies = sorted(instant_upload(tmp, portal.odata_root("instant"),
                                      orgs / "instant.db", writes))
    p50 = statistics.median(latencies)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    return [f"P3 instant upload, API write on the client until visible on the server, "
            f"{len(latencies)} writes: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"{latencies.count(float('inf'))} never seen; "
            f"goal p50 < 250 ms, p99 < 1 s: {verdict(p50 < 0.25 and p99 < 1)}"]


if __name__ == "__main__":
    main()
