"""`flask sync …` and `flask transactions …`: bad inputs refused with nothing changed, and the
whole life of a connection against a real server portal, jobs run by a real RQ worker."""

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from redis import Redis
from rq import Queue, SimpleWorker

from portal import crypto
from portal.cli.sync import Progress
from portal.db import get_db, immediate
from portal.orgs import records, registry, transactions
from portal.orgs.metadata import Attribute
from portal.orgs.schema import add_attribute
from portal.orgs.store import open_org
from portal.sync import connections
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, orgs_dir
from tests.sync_helpers import Side, seed_sales

# --- bad input -----------------------------------------------------------------

@pytest.fixture
def orgs(app: Flask, redis: Redis) -> Flask:
    """`plain` (no connection), `cli` (connected, with a pending and an error transaction),
    `broken` (its connect failed); no server is needed as no job runs."""
    # No DNS in tests: host names pass; the address check has its own test below.
    app.config["ALLOW_PRIVATE_SERVERS"] = True
    key = crypto.load_key(app.instance_path)
    with app.app_context():
        db = get_db()
        for name in ("plain", "cli", "broken"):
            registry.create_org(db, orgs_dir(app), name, email=ADMIN_EMAIL,
                                password=ADMIN_PASSWORD, template="sales")
        for name, status in (("cli", "connected"), ("broken", "failed")):
            connection = connections.create_connection(
                db, key, registry.get_org(db, name)["id"], backend="resco",
                url="https://crm.example.com/odata/v4/srv/", username=ADMIN_EMAIL,
                password=ADMIN_PASSWORD)
            connections.set_status(db, connection.id, status,
                                   error="the server refused" if status == "failed" else None)
    with open_org(orgs_dir(app), "cli") as org:
        transactions.set_client(org, True)
        records.create_record(org, "account", {"name": "pending one"})
        records.create_record(org, "account", {"name": "error one"})
        with immediate(org.db):
            transactions.mark(org.db, [2], "error", "the server said no")
    return app


def state(app: Flask, redis: Redis) -> dict[str, Any]:
    """Everything a refused command must leave as it was."""
    with app.app_context():
        db = get_db()
        conns = [(c.org_name, c.backend, c.url, c.status, c.schedule_every_minutes,
                  c.schedule_daily_at, c.schedule_active, c.next_run_at)
                 for c in connections.list_connections(db)]
        orgs = [o["name"] for o in registry.list_orgs(db)]
    with open_org(orgs_dir(app), "cli") as org:
        rows = [(t.id, t.status, t.error) for t in transactions.list_transactions(org)]
    return {"connections": conns, "orgs": orgs, "transactions": rows,
            "queued": Queue("default", connection=redis).count,
            "files": sorted(p.name for p in orgs_dir(app).iterdir())}


CONNECT = ["sync", "connect", "plain", "--url", "https://crm.example.com/odata/v4/srv/",
           "--user", "u@example.com", "--password-stdin"]


@pytest.mark.parametrize("args, message", [
    (["sync", "connect", "ghost", *CONNECT[3:]], "'ghost' does not exist"),
    ([*CONNECT, "--type", "nope"], "unknown backend type"),
    ([*CONNECT, "--type", "salesforce"], "consumer key"),
    ([*CONNECT, "--type", "salesforce", "--consumer-key", "k"], "consumer secret"),
    ([*CONNECT, "--type", "dynamics", "--tenant", "not/a tenant"], "tenant must be"),
    ([*CONNECT, "--tenant", "contoso.onmicrosoft.com"], "takes no sign-in options"),
    ([*CONNECT, "--type", "odata", "--page-size", "0"], "page size must be a number"),
    ([*CONNECT, "--type", "odata", "--auth", "client_credentials"], "need the token URL"),
    ([*CONNECT, "--type", "odata", "--tenant", "x"], "unknown OData option 'tenant'"),
    (["sync", "connect", "plain", "--url", "ftp://crm.example.com/", "--user", "u",
      "--password-stdin"], "must start with http"),
    ([*CONNECT[:-1], "--user", "", "--password-stdin"], "user name"),
    (["sync", "connect", "cli", *CONNECT[3:]], "connected already"),
    (["sync", "run", "ghost"], "'ghost' does not exist"),
    (["sync", "run", "plain", "--wait"], "'plain' is not connected"),
    (["sync", "run", "broken"], "its connection is failed: the server refused"),
    (["sync", "run", "broken"], "`flask sync resume` connects it again"),
    (["sync", "resume", "cli"], "is connected: there is nothing to resume"),
    (["sync", "resume", "plain"], "'plain' is not connected"),
    (["sync", "resume", "ghost"], "'ghost' does not exist"),
    (["sync", "metadata", "plain"], "'plain' is not connected"),
    (["sync", "metadata", "ghost", "--wait"], "does not exist"),
    (["sync", "schedule", "plain", "--every", "15m"], "'plain' is not connected"),
    (["sync", "schedule", "cli", "--every", "15x"], "like 15m"),
    (["sync", "schedule", "cli", "--every", "0m"], "like 15m"),
    (["sync", "schedule", "cli", "--every", "9999h"], "at most a week"),
    (["sync", "schedule", "cli", "--daily", "25:00"], "HH:MM"),
    (["sync", "schedule", "cli", "--daily", "1am"], "HH:MM"),
    (["sync", "schedule", "cli", "--every", "15m", "--daily", "01:00"], "choose one"),
    (["sync", "schedule", "cli", "--every", "15m", "--off"], "choose one"),
    (["sync", "schedule", "cli"], "choose one"),
    (["sync", "status", "ghost"], "'ghost' does not exist"),
    (["transactions", "list", "ghost"], "'ghost' does not exist"),
    (["transactions", "list", "cli", "--status", "bogus"], "unknown status"),
    (["transactions", "retry", "cli", "abc"], "'abc' is not a transaction id"),
    (["transactions", "retry", "cli", "1", "0"], "'0' is not a transaction id"),
    (["transactions", "retry", "cli"], "name transaction ids or --all-errors"),
    (["transactions", "retry", "cli", "2", "--all-errors"], "not both"),
    (["transactions", "retry", "ghost", "2"], "does not exist"),
    (["transactions", "archive", "cli", "1", "x1"], "'x1' is not a transaction id"),
    (["transactions", "archive", "ghost", "1"], "does not exist"),
])
def test_sync_cli_bad_input_changes_nothing(orgs: Flask, redis: Redis, args: list[str],
                                            message: str) -> None:
    before = state(orgs, redis)
    result = orgs.test_cli_runner().invoke(args=args, input="server-pass1\n")
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert state(orgs, redis) == before


def test_sync_cli_resume_and_new_values_are_the_ways_on_from_a_failed_connect(
        orgs: Flask, redis: Redis) -> None:
    resumed = orgs.test_cli_runner().invoke(args=["sync", "resume", "broken"])
    assert resumed.exit_code == 0, resumed.output
    jobs = Queue("default", connection=redis).job_ids
    assert len(jobs) == 1 and jobs[0].startswith("connect-") and jobs[0] in resumed.output
    # Asked again while that run is queued: the same run, not a second one.
    again = orgs.test_cli_runner().invoke(args=["sync", "resume", "broken"])
    assert again.exit_code == 0 and Queue("default", connection=redis).job_ids == jobs
    changed = orgs.test_cli_runner().invoke(args=[
        "sync", "connect", "broken", "--url", "https://crm2.example.com/odata/v4/srv/",
        "--user", "other@example.com", "--password-stdin"], input="server-pass2\n")
    assert changed.exit_code == 0, changed.output
    assert "changed; connect job" in changed.output
    with orgs.app_context():
        connection = connections.connection_of_org(get_db(), "broken")
        assert connection is not None and connection.status == "pending"
        assert connection.url == "https://crm2.example.com/odata/v4/srv/"


def test_sync_cli_connect_refuses_an_empty_password(orgs: Flask, redis: Redis) -> None:
    before = state(orgs, redis)
    result = orgs.test_cli_runner().invoke(args=CONNECT, input="\n")
    assert result.exit_code == 1 and "enter the server password" in result.output
    assert state(orgs, redis) == before


def test_sync_cli_connect_refuses_a_private_server_unless_allowed(orgs: Flask,
                                                                  redis: Redis) -> None:
    orgs.config["ALLOW_PRIVATE_SERVERS"] = False
    before = state(orgs, redis)
    result = orgs.test_cli_runner().invoke(args=[
        "sync", "connect", "plain", "--url", "http://127.0.0.1:9/", "--user", "u",
        "--password-stdin"], input="server-pass1\n")
    assert result.exit_code == 1 and "loopback" in result.output
    assert state(orgs, redis) == before


def test_sync_cli_connect_dynamics_as_an_application_user(orgs: Flask, redis: Redis) -> None:
    from portal.db import get_db
    from portal.sync import connections

    result = orgs.test_cli_runner().invoke(args=[
        "sync", "connect", "plain", "--type", "dynamics", "--url",
        "https://93.184.215.14", "--user", "app-id", "--auth", "client_credentials",
        "--tenant", "contoso.onmicrosoft.com", "--password-stdin"], input="app-secret\n")
    assert result.exit_code == 0, result.output
    with orgs.app_context():
        [connection] = [c for c in connections.list_connections(get_db())
                        if c.org_name == "plain"]
    assert (connection.backend, connection.username) == ("dynamics", "app-id")
    assert connection.server_options == {"auth": "client_credentials",
                                         "tenant": "contoso.onmicrosoft.com"}


def test_sync_cli_wait_gives_up_after_its_timeout(orgs: Flask, redis: Redis) -> None:
    result = orgs.test_cli_runner().invoke(args=["sync", "run", "cli", "--wait",
                                                 "--timeout", "0.3"])
    assert result.exit_code == 1, result.output
    assert "Waiting for a worker" in result.output
    job = Queue("default", connection=redis).job_ids
    assert len(job) == 1 and job[0].startswith("sync-1-")
    assert f"job {job[0]} is still queued after 0.3 s; it carries on" in result.output


def test_sync_cli_status_of_an_org_without_connection(orgs: Flask) -> None:
    result = orgs.test_cli_runner().invoke(args=["sync", "status", "plain"])
    assert result.exit_code == 1 and "'plain' is not connected" in result.output


def test_sync_cli_progress_bar_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(tty=True)
    progress.show({"step": "download", "entity": "account", "done": 10, "total": 40})
    progress.show({"step": "download", "entity": "account", "done": 40, "total": 40})
    progress.show({"step": "upload", "entity": None, "done": 3, "total": None})
    progress.close()
    out = capsys.readouterr().out
    assert out.count("\r") == 3 and out.endswith("\n")
    # The finished entity keeps its line; the next step starts a new one.
    assert out.split("\n")[0].endswith("40/40") and out.split("\n")[1].startswith("\rupload")
    assert "download account" in out and "[#######" in out and "10/40" in out
    assert "[" + "#" * Progress.WIDTH + "] 40/40" in out


# --- against a real server portal ------------------------------------------------

@pytest.fixture
def pair(tmp_path: Path, redis_url: str, redis: Redis, portal_process):
    """Portal A (a real gunicorn) with org `srv` of 30 accounts; portal B's side with org `cli`."""
    server = Side(tmp_path / "a", redis_url)
    server.create_org("srv")
    with server.org("srv") as org:
        seed_sales(org, accounts=30)
    process = portal_process(tmp_path / "a")
    server.url = process.odata_root("srv")
    # The server runs on 127.0.0.1; a stopped server fails a run at once.
    client = Side(tmp_path / "b", redis_url,
                  config={"ALLOW_PRIVATE_SERVERS": True, "SYNC_HTTP_RETRIES": 0})
    client.create_org("cli", template=None)
    return server, client, process


def invoke_working(side: Side, redis: Redis, args: list[str], stdin: str | None = None) -> Result:
    """Run a command in a thread while a real RQ worker works the queue in this one.

    The worker stays in the main thread because RQ installs signal handlers,
    which only the main thread may do; the command only polls Redis and SQLite.
    """
    results: list[Result] = []
    runner = side.app.test_cli_runner()
    thread = threading.Thread(target=lambda: results.append(runner.invoke(args=args,
                                                                          input=stdin)))
    with side.app.app_context():
        # A first worker sets up RQ's log handlers (when none exist) on this stdout, before
        # the runner swaps sys.stdout for the command's output.
        SimpleWorker(["default"], connection=redis).work(burst=True)
        thread.start()
        while thread.is_alive():
            SimpleWorker(["default"], connection=redis).work(burst=True)
            thread.join(0.05)
    return results[0]


STEPS = ("checking credentials", "copying metadata", "upload", "download ", "connected")


def progress_lines(output: str) -> list[str]:
    """The progress lines a command printed while it waited (not on a terminal: one per step)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if " queued" in line)
    end = next(i for i, line in enumerate(lines) if line.startswith("entity "))
    shown = [line for line in lines[start + 1:end] if not line.startswith("Waiting for")]
    assert all(line.startswith(STEPS) for line in shown), shown
    return shown


def test_sync_cli_connect_run_status_schedule_and_transactions(pair, redis: Redis) -> None:
    server, client, process = pair
    cli = client.app.test_cli_runner()

    connected = invoke_working(client, redis, [
        "sync", "connect", "cli", "--type", "3b2f3c1e-7f0c-4f4b-9a57-1c2d3e4f5a6b",
        "--url", server.url, "--user", ADMIN_EMAIL, "--password-stdin", "--wait"],
        stdin=ADMIN_PASSWORD + "\n")
    assert connected.exit_code == 0, connected.output
    out = connected.output
    assert re.search(r"connect job connect-1-\d+ queued\.", out)
    # Progress: a line per step or entity (the runner's stdout is not a terminal).
    assert progress_lines(out) and "\r" not in out
    assert f"Connected cli to {server.url}; sync schedule: every 15m." in out
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("account ")] \
        == [["account", "30"]]
    with client.app.app_context():
        assert connections.connection_of_org(get_db(), "cli").status == "connected"  # type: ignore[union-attr]

    with client.org("cli") as org:
        records.create_record(org, "account", {"name": "New on client"})
    with server.org("srv") as org:
        records.create_record(org, "account", {"name": "New on server"})
    ran = invoke_working(client, redis, ["sync", "run", "cli", "--wait"])
    assert ran.exit_code == 0, ran.output
    assert re.search(r"Sync run of cli queued \(job sync-1-\d+\)\.", ran.output)
    assert progress_lines(ran.output)
    counts = {line.split()[0]: line.split()[1:] for line in ran.output.splitlines()
              if line.startswith(("account ", "total "))}
    # downloaded, uploaded, deleted, conflicts, errors
    assert counts["account"] == ["1", "1", "0", "0", "0"]
    assert "succeeded in" in ran.output

    with server.org("srv") as org:
        add_attribute(org, "account", Attribute("cf_rating", "integer", "Rating"))
    meta = invoke_working(client, redis, ["sync", "metadata", "cli", "--wait"])
    assert meta.exit_code == 0, meta.output
    assert "cf_rating" in meta.output and "1 change(s)" in meta.output

    scheduled = cli.invoke(args=["sync", "schedule", "cli", "--daily", "01:00"])
    assert scheduled.exit_code == 0, scheduled.output
    assert "Sync schedule of cli: daily at 01:00 UTC; next run" in scheduled.output
    assert "every 2h" in cli.invoke(args=["sync", "schedule", "cli", "--every", "2h"]).output
    assert client.connection(1).schedule_every_minutes == 120

    with client.org("cli") as org:
        for name in ("one", "two", "three"):
            records.create_record(org, "account", {"name": name})
        with immediate(org.db):
            transactions.mark(org.db, [3], "error", "the server said no")
    status = cli.invoke(args=["sync", "status"])
    assert status.exit_code == 0, status.output
    assert f"cli: connected — resco {server.url} as {ADMIN_EMAIL}" in status.output
    assert "schedule: every 2h" in status.output
    assert "transactions: 2 pending, 1 in error" in status.output
    one = cli.invoke(args=["sync", "status", "cli"]).output
    assert "account" in one and "enabled" in one and "sync deletion:" in one
    assert [line.split()[1:4] for line in one.splitlines()[-3:]] == [
        ["metadata", "cli", "succeeded"], ["sync", "cli", "succeeded"],
        ["connect", "connect", "succeeded"]]

    listed = cli.invoke(args=["transactions", "list", "cli", "--status", "error"])
    assert listed.exit_code == 0, listed.output
    rows = listed.output.splitlines()[1:]
    assert len(rows) == 1 and rows[0].split()[0] == "3" and "the server said no" in rows[0]
    assert "create" in rows[0] and "account" in rows[0]
    assert len(cli.invoke(args=["transactions", "list", "cli"]).output.splitlines()) == 1 + 4

    retried = cli.invoke(args=["transactions", "retry", "cli", "3", "4"])
    assert retried.exit_code == 0, retried.output
    assert "1 transaction(s) of cli set to pending" in retried.output
    assert "1 not changed" in retried.output
    archived = cli.invoke(args=["transactions", "archive", "cli", "2", "4"])
    assert archived.exit_code == 0 and "2 transaction(s) of cli archived" in archived.output
    with client.org("cli") as org:
        with immediate(org.db):
            transactions.mark(org.db, [3], "error", "again")
        all_errors = cli.invoke(args=["transactions", "retry", "cli", "--all-errors"])
        assert "1 transaction(s) of cli set to pending" in all_errors.output
        assert transactions.counts(org) == {"pending": 1, "processed": 1, "error": 0,
                                            "archived": 2}

    scheduled = cli.invoke(args=["sync", "schedule", "cli", "--off"])
    assert "Sync schedule of cli: off" in scheduled.output
    assert not client.connection(1).schedule_active

    # A run that fails exits 1 with the reason the run record keeps.
    process.stop()
    failed = invoke_working(client, redis, ["sync", "run", "cli", "--wait"])
    assert failed.exit_code == 1, failed.output
    assert "the sync run failed" in failed.output and "cannot be reached" in failed.output
    assert "Traceback" not in failed.output


def test_sync_cli_connect_with_a_wrong_password_exits_1(pair, redis: Redis) -> None:
    server, client, _ = pair
    result = invoke_working(client, redis, [
        "sync", "connect", "cli", "--url", server.url, "--user", ADMIN_EMAIL,
        "--password-stdin", "--wait"], stdin="wrong-password1\n")
    assert result.exit_code == 1, result.output
    assert "refused" in result.output and "Traceback" not in result.output
    assert client.connection(1).status == "failed"
