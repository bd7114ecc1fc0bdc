"""A person connects an org in a real browser: Debian's Chromium driven by Playwright.

Two real portal processes (gunicorn): the server portal hosts org `srv`; the
client portal serves the connect page. A real RQ worker process (`rq worker
--burst`, bound to the client's instance) runs the connect job once Connect
was clicked, and stops by itself when the queue is empty. Screenshots go to
docs/screenshots/ when SAVE_SCREENSHOTS=1 (so test runs do not rewrite the
committed ones), else to the test's tmp folder.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from redis import Redis

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.fault_proxy import FaultProxy
from tests.sync_helpers import Side, seed_sales

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
LOCAL_SERVERS = {"PORTAL_ALLOW_PRIVATE_SERVERS": "true", "PORTAL_RATELIMIT_ENABLED": "false"}

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is missing (apt-get install chromium)")


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go."""
    folder = ROOT / "docs" / "screenshots" if os.environ.get("SAVE_SCREENSHOTS") == "1" \
        else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def portals(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, redis: Redis,
            portal_process):
    """(server OData root of org srv, client portal process): two real portals.

    The server org's number of accounts is the test's (indirect) parameter.
    """
    server = Side(tmp_path / "server", redis_url)
    server.create_org("srv")
    with server.org("srv") as org:
        seed_sales(org, accounts=getattr(request, "param", 200))
    server_process = portal_process(tmp_path / "server")
    client_process = portal_process(tmp_path / "client", env=LOCAL_SERVERS)
    return server_process.odata_root("srv"), client_process


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def run_worker(instance: Path, redis_url: str) -> subprocess.CompletedProcess[bytes]:
    """A real RQ worker process on the client's instance, until the queue is empty."""
    env = {**os.environ, "PORTAL_INSTANCE_PATH": str(instance), "REDIS_URL": redis_url,
           **LOCAL_SERVERS}
    return subprocess.run(
        [str(Path(sys.executable).parent / "rq"), "worker", "--burst", "--url", redis_url,
         "--worker-class", "rq.worker.SimpleWorker", "default"],
        cwd=ROOT, env=env, capture_output=True, timeout=180, check=False)


def start_worker(instance: Path, redis_url: str) -> subprocess.Popen[bytes]:
    """The same worker, started in the background while the browser watches.

    Its output goes to worker.log in the instance folder, for `diagnosis`.
    """
    env = {**os.environ, "PORTAL_INSTANCE_PATH": str(instance), "REDIS_URL": redis_url,
           **LOCAL_SERVERS}
    with open(instance / "worker.log", "wb") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "rq"), "worker", "--burst", "--url", redis_url,
             "--worker-class", "rq.worker.SimpleWorker", "default"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def diagnosis(page: Any, client: Any) -> str:
    """What a status page that never ended was showing, and what the worker and portal logged."""
    status_url = page.eval_on_selector("#connection-status", "box => box.dataset.statusUrl")
    try:
        status = requests.get(client.url + status_url, timeout=10).text
    except requests.RequestException as exc:
        status = f"status.json unreadable: {exc}"
    worker_log = (client.instance_path / "worker.log").read_text(errors="replace")
    return (f"the page showed: {page.text_content('#status-text')!r}\n"
            f"status.json: {status}\nworker.log (end): {worker_log[-3000:]}\n"
            f"gunicorn.log (end): {client.log_path.read_text(errors='replace')[-3000:]}")


def fill_connect_page(page: Any, server_url: str, password: str) -> None:
    """What a person types into the connect page."""
    page.fill("#organization", "acme")
    page.fill("#email", "ann@example.com")
    page.fill("#password", "pass-word-1")
    page.fill("#confirm", "pass-word-1")
    page.fill("#firstname", "Ann")
    page.fill("#lastname", "Smith")
    page.fill("#company", "Acme")
    page.fill("#jobtitle", "CRM admin")
    page.fill("#phone", "+421 900 000 000")
    page.fill("#country", "Slovakia")
    page.select_option("#backend", "resco")
    page.fill("#server_url", server_url)
    page.fill("#server_username", ADMIN_EMAIL)
    page.fill("#server_password", password)
    page.check("#consent")


@pytest.mark.parametrize("portals", [12_000], indirect=True, ids=["12000-accounts"])
def test_browser_connect_reaches_connected_against_a_real_server_portal(
        portals, browser, shots: Path, redis_url: str) -> None:
    server_root, client = portals
    # The server's second page of accounts is held until the browser has shown the
    # first sync's progress: however fast the sync, it cannot end before the page looks.
    base, path = server_root.split("/odata/", 1)
    proxy = FaultProxy(base)
    proxy.hold_page = ("accounts", 2)
    try:
        _connect_and_watch(client, f"{proxy.url}/odata/{path}", browser, shots, redis_url,
                           proxy)
    finally:
        proxy.stop()


def _connect_and_watch(client, server_url: str, browser, shots: Path, redis_url: str,
                       proxy: FaultProxy) -> None:
    """Connect from the form to Connected, the first sync's progress seen on the way."""
    page = browser.new_page(viewport={"width": 1000, "height": 1500})
    page.goto(client.url + "/Register.aspx?otype=connect")
    fill_connect_page(page, server_url, ADMIN_PASSWORD)
    page.screenshot(path=str(shots / "connect-page.png"), full_page=True)
    # A first try with a mistake: the errors appear beside the fields, the values stay.
    page.fill("#confirm", "pass-word-2")
    page.click("input[type=submit]")
    assert page.text_content("#confirm-error") == "The two passwords do not match."
    assert page.input_value("#organization") == "acme"
    assert page.input_value("#password") == ""  # passwords are never sent back

    fill_connect_page(page, server_url, ADMIN_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/connect/acme/status?token=*")
    assert "Waiting for a worker" in page.text_content("#status-text")

    worker = start_worker(client.instance_path, redis_url)
    try:
        # The script follows the job: the progress bar shows records of an entity.
        page.wait_for_selector("#progress-box:not([hidden]), #result", timeout=60_000)
        seen_progress = page.query_selector("#result") is None
        page.screenshot(path=str(shots / "connect-progress.png"), full_page=True)
        proxy.release()
        try:
            page.wait_for_selector("#result h2", timeout=180_000)
        except PlaywrightTimeout:
            pytest.fail("the connect never ended:\n" + diagnosis(page, client))
        page.screenshot(path=str(shots / "connect-connected.png"), full_page=True)
        assert worker.wait(120) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert page.text_content("#result h2") == "Connected"
    assert seen_progress, "the first sync ended before the page showed its progress"
    assert all(cls.endswith("step-done") for cls in
               page.eval_on_selector_all("#steps li", "items => items.map(i => i.className)"))
    link = page.get_attribute("#odata-link", "href")
    assert link and link.endswith("/odata/v4/acme/")


def test_browser_connect_with_a_wrong_password_fails_with_the_message_then_is_fixed(
        portals, browser, shots: Path, redis_url: str) -> None:
    server_url, client = portals
    page = browser.new_page(viewport={"width": 1000, "height": 1300})
    page.goto(client.url + "/connect")
    fill_connect_page(page, server_url, "wrong-password-1")
    page.click("input[type=submit]")
    page.wait_for_url("**/connect/acme/status?token=*")
    assert run_worker(client.instance_path, redis_url).returncode == 0
    # The script notices the end and reloads the page with the result.
    page.wait_for_selector("#result h2", timeout=60_000)
    assert page.text_content("#result h2") == "Failed"
    assert "refused the user name or password" in page.text_content("#error-message")
    page.screenshot(path=str(shots / "connect-failed.png"), full_page=True)

    # Fix the password in the form under the message, and try again.
    assert page.input_value("#server_url") == server_url
    page.fill("#server_password", ADMIN_PASSWORD)
    page.click("input[type=submit][value='Try again']")
    page.wait_for_url("**/connect/acme/status?token=*")
    assert "Connecting again" in page.content()
    assert run_worker(client.instance_path, redis_url).returncode == 0
    page.wait_for_selector("#result h2", timeout=60_000)
    assert page.text_content("#result h2") == "Connected"
