"""An org admin runs CRM Sync in a real browser: Debian's Chromium driven by Playwright.

One module shares two real portal processes (gunicorn) and one real RQ worker
process: the server portal hosts org `srv` (20,000 accounts, so that a full
read takes the seconds in which progress shows); the client portal hosts
`acme`, an existing org without a connection, which the admin signs in to and
connects through the Connector, and `beta`, an org that is no client, whose admin
customizes it. Each test then drives one tab or toolbar
action and checks its effect on the data (the next run, the server's records),
read through the data layer. Screenshots go to docs/screenshots/ when
SAVE_SCREENSHOTS=1, else to a temporary folder.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.security import generate_password_hash

from portal.db import get_db
from portal.orgs import queries, records, registry, schema, sync_state, transactions
from portal.orgs.metadata import Attribute
from portal.queue import run_job_id
from portal.sync import connections, runs
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.portal_process import PortalProcess, _die_with_parent
from tests.sync_helpers import Side, seed_sales
from tests.test_browser_connect import CHROMIUM, LAUNCH_ARGS, LOCAL_SERVERS, ROOT

ACCOUNTS = 20_000
ANN, ANN_PASSWORD = "ann@example.com", "pass-word-1"
BEA = "bea@example.com"
OPERATOR, OPERATOR_PASSWORD = "ops", "ops-pass-1"
WAIT_S = 180  # how long a job may take on this shared machine before the test gives up

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is missing (apt-get install chromium)")


class World:
    """The module's portals, worker and browser page, and data-layer views of both sides."""

    def __init__(self, folder: Path, redis_url: str, shots: Path) -> None:
        self.shots = shots
        self.server = Side(folder / "server", redis_url)
        self.client = Side(folder / "client", redis_url, config=LOCAL_SERVERS)
        self.server.create_org("srv")
        with self.server.org("srv") as org:
            seed_sales(org, accounts=ACCOUNTS)
        with self.client.app.app_context():
            registry.create_org(get_db(), self.client.orgs_dir, "acme", email=ANN,
                                password=ANN_PASSWORD)
            # An org that is no client of a connection: its admin may customize it.
            registry.create_org(get_db(), self.client.orgs_dir, "beta", email=BEA,
                                password=ANN_PASSWORD, template="sales")
        self.server_process = PortalProcess(folder / "server", redis_url)
        operators = json.dumps({OPERATOR: generate_password_hash(OPERATOR_PASSWORD)})
        self.client_process = PortalProcess(folder / "client", redis_url,
                                            env={**LOCAL_SERVERS, "PORTAL_OPERATORS": operators})
        # Pages of 1,000, one entity at a time: a full read of the server reports progress
        # page by page (parallel readers would have the rest written before the next look).
        env = {**os.environ, "PORTAL_INSTANCE_PATH": str(folder / "client"),
               "REDIS_URL": redis_url, "PORTAL_SYNC_PAGE_SIZE": "1000",
               "PORTAL_SYNC_STREAMS": "1", **LOCAL_SERVERS}
        self.worker_log = open(folder / "worker.log", "wb")  # noqa: SIM115 - closed in stop()
        self.worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "rq"), "worker", "--url", redis_url,
             "--worker-class", "rq.worker.SimpleWorker", "default"],
            cwd=ROOT, env=env, stdout=self.worker_log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)  # noqa: PLW1509 - started from the main thread
        self.page: Any = None
        self.browser: Any = None

    @property
    def url(self) -> str:
        """The client portal's base URL."""
        return self.client_process.url

    def stop(self) -> None:
        """Stop the worker (by its PID) and both portals."""
        self.worker.terminate()
        try:
            self.worker.wait(20)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()
        self.worker_log.close()
        self.client_process.stop()
        self.server_process.stop()

    def shot(self, name: str) -> None:
        """A full-page screenshot of the browser's page."""
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def connection(self) -> connections.Connection:
        """The client's connection as the registry has it now."""
        with self.client.app.app_context():
            found = connections.connection_of_org(get_db(), "acme")
        assert found is not None
        return found

    def newest_run(self) -> int:
        """Id of acme's newest run, 0 if none."""
        with self.client.app.app_context():
            db = get_db()
            newest = runs.list_runs(db, registry.get_org(db, "acme")["id"], limit=1)
        return int(newest[0]["id"]) if newest else 0

    def wait_for_run(self, after: int, kind: str = "sync") -> dict[str, Any]:
        """The first run of this kind after `after`, once it has ended."""
        return self.wait_for(lambda: self._ended_run(after, kind), f"a {kind} run after {after}")

    def _ended_run(self, after: int, kind: str) -> dict[str, Any] | None:
        with self.client.app.app_context():
            db = get_db()
            found = [r for r in runs.list_runs(db, registry.get_org(db, "acme")["id"])
                     if r["id"] > after and r["kind"] == kind
                     and r["status"] not in ("queued", "running")]
        return found[-1] if found else None

    def wait_for(self, check: Callable[[], Any], what: str) -> Any:
        """Poll `check` until it answers something truthy (a job works meanwhile)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise AssertionError(f"the worker stopped while waiting for {what}")
            found = check()
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"gave up waiting for {what}")

    def count(self, side: Side, org: str, entity: str, where: str = "",
              params: list[Any] | None = None) -> int:
        """Records of an entity on one side."""
        with side.org(org) as opened:
            return queries.count(opened, opened.entity(entity), where=where, params=params)

    def goto(self, path: str) -> None:
        """Open a page of acme's admin."""
        self.page.goto(self.url + path)

    def sync_all(self) -> dict[str, Any]:
        """Click Sync All and wait for the run to end; returns the run."""
        before = self.newest_run()
        self.page.click("#sync-all")
        return self.wait_for_run(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[World]:
    """Portals, worker and a signed-in browser page of acme's admin, connected to srv."""
    from playwright.sync_api import sync_playwright

    shots = ROOT / "docs" / "screenshots" if os.environ.get("SAVE_SCREENSHOTS") == "1" \
        else tmp_path_factory.mktemp("screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    folder = tmp_path_factory.mktemp("admin")
    world = World(folder, redis_url, shots)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            try:
                world.browser = browser
                world.page = browser.new_page(viewport={"width": 1280, "height": 900})
                sign_in_and_connect(world)
                yield world
            finally:
                browser.close()
    finally:
        world.stop()


def sign_in_and_connect(world: World) -> None:
    """Sign in to acme's admin and connect acme to srv through the Connector."""
    page = world.page
    page.goto(world.url + "/")
    world.shot("home")
    page.click("#home-sign-in")
    page.fill("#organization", "acme")
    page.fill("#email", ANN)
    page.fill("#password", "wrong-password-1")
    page.click("input[type=submit]")
    assert "password is wrong" in page.text_content("#sign-in-error")
    page.fill("#password", ANN_PASSWORD)
    world.shot("admin-sign-in")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/acme/sync/connector")
    page.select_option("#backend", "resco")
    page.fill("#server_url", world.server_process.odata_root("srv"))
    page.fill("#server_username", ADMIN_EMAIL)
    page.fill("#server_password", ADMIN_PASSWORD)
    world.shot("admin-connector")
    page.click("#connect")
    page.wait_for_url("**/admin/acme/sync/connector")
    world.wait_for(lambda: world.connection().status in ("connected", "failed"), "the connect")
    assert world.connection().status == "connected", world.connection().error


def test_browser_admin_connects_through_the_connector(world: World) -> None:
    assert world.count(world.client, "acme", "account") == ACCOUNTS
    world.goto("/admin/acme/")
    world.page.wait_for_url("**/admin/acme/sync/")
    assert world.page.text_content(".badge") == "connected"
    records_cell = world.page.text_content("#entity-account .records")
    assert records_cell == f"{ACCOUNTS:,}"
    world.shot("admin-synchronization")


def test_browser_admin_disabled_entity_is_skipped_by_the_next_run(world: World) -> None:
    page = world.page
    world.goto("/admin/acme/sync/")
    page.check("#entity-competitor input[type=checkbox]")
    page.select_option("#action", "disable")
    page.click("#entities input[type=submit]")
    assert page.text_content("#entity-competitor .enabled") == "No"
    with world.server.org("srv") as org:
        records.create_record(org, "competitor", {"name": "New rival"})
        records.create_record(org, "account", {"name": "Zeta new account"})
    competitors = world.count(world.client, "acme", "competitor")
    run = world.sync_all()
    assert run["status"] == "succeeded"
    assert "competitor" not in run["counts"]
    assert world.count(world.client, "acme", "competitor") == competitors
    assert world.count(world.client, "acme", "account", "name = ?", ["Zeta new account"]) == 1


def set_for(world: World, entity: str, action: str) -> None:
    """Choose one entity on Synchronization and apply an action to it."""
    page = world.page
    world.goto("/admin/acme/sync/")
    page.check(f"#entity-{entity} input[type=checkbox]")
    page.select_option("#action", action)
    page.click("#entities input[type=submit]")
    assert "1 entities changed" in page.text_content(".flash")


def delete_on_server_then_sync(world: World, sync_deletion: str, lead_id: str
                               ) -> tuple[dict[str, Any], bool]:
    """Set lead's Sync Deletion, delete a lead on the server, Sync All: (run, kept on client)."""
    set_for(world, "lead", sync_deletion)
    assert world.page.text_content("#entity-lead .deletion") == (
        "Yes" if sync_deletion == "deletion-on" else "No")
    with world.server.org("srv") as org:
        records.delete_record(org, "lead", lead_id)
    run = world.sync_all()
    assert run["status"] == "succeeded", run["error"]
    with world.client.org("acme") as org:
        return run, records.get_record(org, "lead", lead_id) is not None


def test_browser_admin_sync_deletion_off_then_on_is_honoured_by_the_next_run(
        world: World) -> None:
    with world.client.org("acme") as org:
        leads = [r[0] for r in org.db.execute("SELECT leadid FROM lead ORDER BY leadid LIMIT 2")]
    _, kept = delete_on_server_then_sync(world, "deletion-off", leads[0])
    assert kept  # deleted on the server, kept on the client
    run, kept = delete_on_server_then_sync(world, "deletion-on", leads[1])
    assert not kept and run["counts"]["lead"]["deleted"] == 1  # now the deletion reaches it


def test_browser_admin_filter_built_in_the_editor_then_cleared(world: World) -> None:
    page = world.page
    world.goto("/admin/acme/sync/entities/contact/filter")
    page.click("#add-condition-0")
    page.select_option("#a-0\\.0", "lastname")
    page.select_option("#o-0\\.0", "like")
    page.fill("#v-0\\.0", "Last 1%")
    page.click("#add-group-0")
    page.select_option("#t-0\\.1", "or")
    page.select_option("#a-0\\.1\\.0", "firstname")
    page.fill("#v-0\\.1\\.0", "First 0")
    page.click("#add-condition-0\\.1")
    page.select_option("#a-0\\.1\\.1", "emailaddress1")
    page.select_option("#o-0\\.1\\.1", "null")
    page.click("#refresh-filter")
    world.shot("admin-filter")
    page.click("#save-filter")
    assert "Sync filter of contact saved" in page.text_content(".flash")
    assert 'attribute="lastname" operator="like" value="Last 1%"' in page.text_content(
        "#saved-filter")
    matching = world.count(world.server, "srv", "contact", "lastname LIKE ?", ["Last 1%"])
    run = world.sync_all()
    assert run["status"] == "succeeded", run["error"]
    # Records outside the filter leave the client; the server keeps them.
    assert world.count(world.client, "acme", "contact") == matching < ACCOUNTS
    assert world.count(world.server, "srv", "contact") == ACCOUNTS

    world.goto("/admin/acme/sync/entities/contact/filter")
    page.click("#clear-filter")
    assert "cleared" in page.text_content(".flash")
    run = world.sync_all()
    assert run["status"] == "succeeded", run["error"]
    assert world.count(world.client, "acme", "contact") == ACCOUNTS


def client_account(world: World) -> dict[str, Any]:
    with world.client.org("acme") as org:
        row = org.db.execute("SELECT accountid, name FROM account WHERE name = 'Account 7'"
                             ).fetchone()
    return {"accountid": row[0], "name": row[1]}


def patch_on_client(world: World, account_id: str, values: dict[str, Any]) -> None:
    """Change a client record through the client's Org API, as an app does."""
    answer = requests.patch(f"{world.client_process.odata_root('acme')}accounts({account_id})",
                            json=values, auth=(ANN, ANN_PASSWORD), timeout=30)
    assert answer.status_code in (200, 204), answer.text


def server_value(world: World, account_id: str, name: str) -> Any:
    with world.server.org("srv") as org:
        record = records.get_record(org, "account", account_id)
    return record[name] if record else None


def test_browser_admin_transactions_archived_then_pending_go_through(world: World) -> None:
    page = world.page
    account_id = client_account(world)["accountid"]
    patch_on_client(world, account_id, {"telephone1": "+421 2 1111"})
    with world.client.org("acme") as org:
        pending = [t for t in transactions.list_transactions(org, "pending")
                   if t.record_id == account_id]
    assert len(pending) == 1
    row = f"#transaction-{pending[0].id}"
    world.goto("/admin/acme/sync/transactions?status=pending")
    page.check(f"{row} input[type=checkbox]")
    page.click("#set-archived")
    world.goto("/admin/acme/sync/transactions?status=archived")
    assert page.text_content(f"{row} .tstatus") == "archived"
    page.check(f"{row} input[type=checkbox]")
    world.shot("admin-transactions")
    page.click("#set-pending")
    world.goto("/admin/acme/sync/transactions")
    assert page.text_content(f"{row} .tstatus") == "pending"
    run = world.sync_all()
    assert run["status"] == "succeeded", run["error"]
    world.goto("/admin/acme/sync/transactions")
    assert page.text_content(f"{row} .tstatus") == "processed"
    assert server_value(world, account_id, "telephone1") == "+421 2 1111"


def test_browser_admin_job_schedule_and_run_now_with_progress(world: World) -> None:
    page = world.page
    world.goto("/admin/acme/sync/job")
    page.check("#kind-daily")
    page.fill("#daily_at", "25:00")
    page.click("#schedule input[type=submit]")
    assert "Enter a time from 00:00 to 23:59" in page.text_content("#daily_at-error")
    page.fill("#daily_at", "06:30")
    page.check("#active")
    page.click("#schedule input[type=submit]")
    assert page.text_content("#next-run").endswith("06:30:00Z")
    page.check("#kind-every")
    page.fill("#every", "5")
    page.select_option("#unit", "m")
    page.click("#schedule input[type=submit]")
    assert world.connection().schedule_every_minutes == 5
    # Forget where the downloads stand, so that Run Now reads the server's records again.
    with world.client.org("acme") as org:
        sync_state.reset(org)
    before = world.newest_run()
    page.click("#run-now")
    # Queued or running: the page after the click says so at once.
    page.wait_for_selector("#run-progress:not([hidden])", timeout=10_000)
    # Hold the worker (SIGSTOP to the process this module started) once it reports a page,
    # so that the browser sees the run in progress however fast this machine is.
    # This run's download, not the connect's last progress the connection still shows.
    world.wait_for(lambda: (world.connection().progress or {}).get("step") == "download"
                   and (world.connection().progress or {}).get("done")
                   and world._ended_run(before, "sync") is None, "the run's first page")
    world.worker.send_signal(signal.SIGSTOP)
    try:
        page.wait_for_function(
            "document.getElementById('run-text').textContent.includes('is running')",
            timeout=30_000)
        shown = page.text_content("#run-text")
        world.shot("admin-progress")
        first = dict(world.connection().progress or {})
        # Let the worker read on until it reports another page, hold it again: the bar moves.
        world.worker.send_signal(signal.SIGCONT)
        world.wait_for(lambda: (world.connection().progress or {}) != first
                       or world._ended_run(before, "sync"), "the run's next page")
        world.worker.send_signal(signal.SIGSTOP)
        assert world._ended_run(before, "sync") is None, "the run ended before a second page"
        page.wait_for_function(
            "(shown) => { const t = document.getElementById('run-text').textContent;"
            " return t.includes('is running') && t.replace(/\\s+/g, ' ').trim() !== shown; }",
            arg=" ".join(shown.split()), timeout=30_000)
        moved = page.text_content("#run-text")
    finally:
        world.worker.send_signal(signal.SIGCONT)
    assert "download" in shown and "records" in shown, shown
    assert " ".join(moved.split()) != " ".join(shown.split()), (shown, moved)
    run = world.wait_for_run(before)
    assert run["status"] == "succeeded" and run["trigger"] == "button"
    # The script notices the end and reloads the page: the bar is gone.
    page.wait_for_selector("#run-progress", state="hidden", timeout=60_000)
    world.shot("admin-job")


def test_browser_admin_instant_mode_sends_a_change_without_a_run(world: World) -> None:
    page = world.page
    world.goto("/admin/acme/sync/connection")
    page.check("input[name=write_mode][value=instant]")
    page.select_option("#conflict_policy", "newest-wins")
    page.fill("#streams", "17")  # refused beside the field, nothing saved
    page.click("#save-settings")
    assert "from 1 to 16" in page.text_content("#streams-error")
    assert world.connection().write_offline is True
    page.fill("#streams", "")  # empty: the portal's default
    page.click("#save-settings")
    assert "Settings saved" in page.text_content(".flash")
    assert world.connection().write_offline is False and world.connection().streams is None
    assert "(empty: the portal's default" in page.text_content("#streams-used")
    # Test credentials: a worker asks the server; the page reloads itself until it answered.
    # The worker is held (SIGSTOP) meanwhile, so that "Checking…" is seen on any machine.
    world.worker.send_signal(signal.SIGSTOP)
    try:
        page.click("#test-credentials")
        assert "Checking…" in page.text_content("#credentials-checking")
        world.shot("admin-checking")
    finally:
        world.worker.send_signal(signal.SIGCONT)
    page.wait_for_selector("#credentials-result", timeout=WAIT_S * 1000)
    assert "The server accepted the credentials" in page.text_content("#credentials-result")
    world.shot("admin-connection")
    account_id = client_account(world)["accountid"]
    before = world.newest_run()
    patch_on_client(world, account_id, {"telephone1": "+421 2 2222"})
    world.wait_for(lambda: server_value(world, account_id, "telephone1") == "+421 2 2222",
                   "the instant upload")
    upload = world.wait_for_run(before, kind="upload")
    assert upload["trigger"] == "write" and world._ended_run(before, "sync") is None


def test_browser_admin_update_metadata_preview_then_apply(world: World) -> None:
    page = world.page
    with world.server.org("srv") as org:
        schema.add_attribute(org, "account", Attribute("rating", "integer", "Rating",
                                                       {"1033": "Rating"}))
    world.goto("/admin/acme/sync/")
    page.click("#update-metadata")
    # A worker reads the server's metadata; the page reloads itself until the answer is in.
    page.wait_for_selector("#preview, #preview-error", timeout=WAIT_S * 1000)
    assert "account.rating" in page.text_content("#preview")
    world.shot("admin-metadata")
    before = world.newest_run()
    page.click("#apply-metadata")
    run = world.wait_for_run(before, kind="metadata")
    assert run["status"] == "succeeded", run["error"]
    with world.client.org("acme") as org:
        assert org.entity("account").attribute("rating") is not None
    world.goto("/admin/acme/sync/metadata")
    page.click("#check-metadata")
    page.wait_for_selector("#preview-none", timeout=WAIT_S * 1000)


def test_browser_admin_logs_and_the_runs_chart_from_real_runs(world: World) -> None:
    page = world.page
    world.goto("/admin/acme/sync/logs")
    page.fill("#text", "run done")
    page.click("#log-search button[type=submit]")
    lines = page.query_selector_all("table.logs tbody tr")
    assert lines and all("run done" in line.text_content() for line in lines)
    world.shot("admin-logs")
    world.goto("/admin/acme/sync/runs")
    with world.client.app.app_context():
        db = get_db()
        ended = [r for r in runs.list_runs(db, registry.get_org(db, "acme")["id"])
                 if r["duration_s"] is not None]
    assert len(page.query_selector_all("#runs-chart circle.dot")) == len(ended) >= 5
    world.shot("admin-runs")


def change_credentials(world: World, password: str) -> None:
    world.goto("/admin/acme/sync/connection")
    world.page.fill("#server_password", password)
    world.page.click("#save-credentials")
    assert "Server credentials saved" in world.page.text_content(".flash")


def test_browser_operator_sees_a_failed_run_and_requeues_it(world: World) -> None:
    change_credentials(world, "wrong-password-1")
    world.goto("/admin/acme/sync/job")
    failed = world.sync_all()
    assert failed["status"] == "failed" and "refused" in failed["error"]

    operator = world.browser.new_page(viewport={"width": 1280, "height": 900})
    operator.goto(world.url + "/status")
    operator.wait_for_url("**/status/sign-in")
    operator.fill("#username", OPERATOR)
    operator.fill("#password", OPERATOR_PASSWORD)
    operator.click("input[type=submit]")
    operator.wait_for_url("**/status")
    job = run_job_id("sync", world.connection().id, failed["id"])
    assert "refused" in operator.text_content(f"#failed-{job} .reason")
    assert "acme" in operator.text_content("#org-acme")
    assert "No worker is running" not in operator.text_content("#workers")
    world.page, admin_page = operator, world.page
    world.shot("operator-status")
    world.page = admin_page

    # The admin fixes the password; the operator requeues the failed run, which now succeeds.
    change_credentials(world, ADMIN_PASSWORD)
    before = world.newest_run()
    operator.click(f"#requeue-{job}")
    assert f"Job {job} is queued again" in operator.text_content(".flash")
    run = world.wait_for_run(before)
    assert run["status"] == "succeeded", run["error"]
    operator.reload()
    assert operator.query_selector(f"#failed-{job}") is None
    operator.close()


def sign_in_as(world: World, org: str, email: str) -> Any:
    """A new browser page signed in to an org's admin."""
    page = world.browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(world.url + "/admin/sign-in")
    page.fill("#organization", org)
    page.fill("#email", email)
    page.fill("#password", ANN_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"**/admin/{org}/**")
    return page


def test_browser_admin_customization_of_an_org_then_refused_for_a_client_org(
        world: World) -> None:
    beta = sign_in_as(world, "beta", BEA)
    try:
        beta.goto(world.url + "/admin/beta/customization")
        beta.fill("#logicalname", "cf_project")
        beta.fill("#displayname", "Project")
        beta.click("#add-entity input[type=submit]")
        beta.wait_for_url("**/admin/beta/customization/cf_project")
        beta.fill("#add-attribute #logicalname", "stage")
        beta.fill("#add-attribute #displayname", "Stage")
        beta.select_option("#type", "picklist")
        beta.fill("#options_text", "one=Idea")  # bad input: answered beside the field
        beta.click("#add-attribute input[type=submit]")
        assert "value=label" in beta.text_content("#options_text-error")
        beta.fill("#options_text", "1=Idea, 2=Running")
        beta.click("#add-attribute input[type=submit]")
        assert beta.text_content("#attribute-stage td:nth-child(3)") == "picklist"
        beta.fill("#entity-displayname", "Projects")
        beta.click("#label-form input[type=submit]")
        world.page, admin_page = beta, world.page
        world.shot("admin-customization")
        world.page = admin_page
    finally:
        beta.close()
    with world.client.org("beta") as org:
        project = org.entity("cf_project")
        stage = project.attribute("stage")
        assert project.displayname == "Projects"
        assert stage is not None and [(o.value, o.label) for o in stage.options] == [
            (1, "Idea"), (2, "Running")]

    # acme is the client of srv: metadata flows from the server only, so the screen says no.
    world.goto("/admin/acme/customization")
    assert "is the client of a connection" in world.page.text_content("#customization-refused")
    assert world.page.query_selector("#add-entity") is None
    world.goto("/admin/acme/customization/account")
    assert "is the client of a connection" in world.page.text_content("#customization-refused")


def test_browser_admin_api_token_created_shown_once_then_revoked(world: World) -> None:
    page = world.page
    world.goto("/admin/acme/tokens")
    page.fill("#email", "nobody@example.com")
    page.click("#create-token input[type=submit]")
    assert "has no user" in page.text_content("#email-error")
    page.fill("#email", ANN)
    page.click("#create-token input[type=submit]")
    token = page.text_content("#token-value").strip()
    world.shot("admin-tokens")
    root = world.client_process.odata_root("acme")
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.get(root + "accounts?$top=1", headers=bearer, timeout=30).status_code == 200
    world.goto("/admin/acme/tokens")
    assert token not in page.content()  # shown once only
    revoke = page.query_selector_all("#tokens button[id^=revoke-]")[-1]
    revoke.click()
    assert "revoked" in page.text_content(".flash")
    assert requests.get(root + "accounts?$top=1", headers=bearer, timeout=30).status_code == 401


def test_browser_admin_application_user_created_shown_once_then_revoked(world: World) -> None:
    page = world.page
    world.goto("/admin/acme/applications")
    page.click("#create-application input[type=submit]")  # no name: answered beside it
    assert "Enter a name" in page.text_content("#name-error")
    page.fill("#name", "Nightly ETL")
    page.click("#create-application input[type=submit]")
    client_id = page.text_content("#client-id").strip()
    secret = page.text_content("#client-secret").strip()
    world.shot("admin-applications")
    grant = {"grant_type": "client_credentials", "client_id": client_id,
             "client_secret": secret, "scope": f"{world.url}/dataverse/acme/.default"}
    token_url = f"{world.url}/dataverse/acme/oauth2/v2.0/token"
    answer = requests.post(token_url, data=grant, timeout=30)
    assert answer.status_code == 200, answer.text
    world.goto("/admin/acme/applications")
    assert secret not in page.content() and "Nightly ETL" in page.text_content(
        f"#application-{client_id} .name")
    page.click(f"#revoke-{client_id}")
    assert "revoked" in page.text_content(".flash")
    assert requests.post(token_url, data=grant, timeout=30).status_code == 401


def test_browser_admin_disconnect_with_an_unsent_change_archives_it_when_confirmed(
        world: World) -> None:
    # Last of the module: it ends acme's connection.
    page = world.page
    world.goto("/admin/acme/sync/connection")
    page.check("input[name=write_mode][value=offline]")
    page.click("#save-settings")
    account_id = client_account(world)["accountid"]
    patch_on_client(world, account_id, {"telephone1": "+421 2 3333"})
    world.goto("/admin/acme/sync/connection")
    assert page.text_content("#unsent").startswith("Changes not on the server yet: 1")
    page.click("#disconnect")
    assert "confirm that they are archived" in page.text_content("#archive_open-error")
    assert world.connection().status == "connected"
    world.shot("admin-disconnect")
    page.check("#archive_open")
    page.click("#disconnect")
    page.wait_for_url("**/admin/acme/sync/connector")
    assert "Changes archived that were not on the server: 1" in page.text_content(".flash")
    with world.client.app.app_context():
        assert connections.connection_of_org(get_db(), "acme") is None
    with world.client.org("acme") as org:
        assert [t.status for t in transactions.list_transactions(org)
                if t.record_id == account_id][-1] == "archived"
    assert server_value(world, account_id, "telephone1") != "+421 2 3333"
