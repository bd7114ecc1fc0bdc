"""The server's page cache (portal/web/page_cache.py), between real processes: a gunicorn
portal with one worker (so that every read meets the same worker's cache) and clients
over real HTTP. A change made behind the store's back (raw SQL, no counter bumped)
shows whether an answer was built or kept."""

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.datastructures import Headers, MultiDict

from portal import create_app
from portal.db import get_db
from portal.errors import InvalidSetting
from portal.orgs import records, registry, schema, store
from portal.orgs.metadata import Attribute
from portal.web.odata.messages import ApiRequest
from portal.web.page_cache import cacheable
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.sync_helpers import Side, seed_sales

USER_EMAIL, USER_PASSWORD = "reader@example.com", "reader-pass-1"
OTHER_EMAIL, OTHER_PASSWORD = "other@example.com", "other-pass-1"  # org `other`'s admin
TRACKED = "odata.track-changes,odata.maxpagesize=10"
PAGED = "odata.maxpagesize=10"


class Server:
    """The server org `srv` (30 accounts) on a real portal, and ways to read and change it."""

    def __init__(self, side: Side, url: str) -> None:
        self.side = side
        self.url = url
        self.root = f"{url}/odata/v4/srv/"

    def session(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD
                ) -> requests.Session:
        """A client of the server org, signed in as one of its users."""
        http = requests.Session()
        http.auth = (email, password)
        return http

    def pages(self, http: requests.Session, url: str | None = None,
              prefer: str = TRACKED) -> list[dict[str, Any]]:
        """Every page of a read, following nextLinks to the end."""
        found, url = [], url or self.root + "accounts?$select=name,accountid"
        while url:
            answer = http.get(url, headers={"Prefer": prefer}, timeout=30)
            assert answer.status_code == 200, answer.text
            found.append(answer.json())
            url = found[-1].get("@odata.nextLink")
        return found

    def behind_the_store(self, sql: str, params: list[Any]) -> None:
        """Change the org file without the store: no counter moves, kept pages stay usable."""
        db = sqlite3.connect(store.org_file(self.side.orgs_dir, "srv"))
        with db:
            db.execute(sql, params)
        db.close()

    def first_account(self) -> str:
        """The id of the first account in key order (the first page's first record)."""
        with self.side.org("srv") as org:
            return org.db.execute("SELECT min(accountid) FROM account").fetchone()[0]


def names(pages: list[dict[str, Any]]) -> dict[str, str]:
    """Account id -> name over every page."""
    return {r["accountid"]: r["name"] for page in pages for r in page["value"]}


@pytest.fixture
def server(tmp_path: Path, redis_url: str, portal_process: Callable[..., Any]) -> Server:
    """Org `srv` with 30 accounts and a second user who is no admin, and org `other`."""
    side = Side(tmp_path / "a", redis_url)
    side.create_org("srv")
    with side.app.app_context():
        registry.add_user(get_db(), "srv", email=USER_EMAIL, password=USER_PASSWORD)
        registry.create_org(get_db(), side.orgs_dir, "other", email=OTHER_EMAIL,
                            password=OTHER_PASSWORD, template="sales")
    with side.org("srv") as org:
        seed_sales(org, accounts=30)
    return Server(side, portal_process(tmp_path / "a", workers=1).url)


def test_clients_reading_the_same_pages_get_identical_answers_from_one_build(
        server: Server) -> None:
    first = server.pages(server.session())
    second = server.pages(server.session())
    assert len(first) == 3 and "@odata.deltaLink" in first[-1]  # 30 accounts, pages of 10
    assert second == first
    # The third client gets the kept pages: a change behind the store is not in them...
    server.behind_the_store("UPDATE account SET name = 'behind' WHERE accountid = ?",
                            [server.first_account()])
    assert server.pages(server.session()) == first
    # ...while another query (no Prefer) is built and has it.
    fresh = server.pages(server.session(), prefer=PAGED)
    assert names(fresh)[server.first_account()] == "behind"


def api_patch(server: Server, account: str) -> str:
    """The name an account has after the write."""
    server.session().patch(f"{server.root}accounts({account})", json={"name": "patched"},
                           timeout=30).raise_for_status()
    return "patched"


def api_delete(server: Server, account: str) -> None:
    server.session().delete(f"{server.root}accounts({account})", timeout=30).raise_for_status()


def sync_write(server: Server, account: str) -> str:
    """The write path of a sync run's download (records from a server)."""
    with server.side.org("srv") as org:
        records.save_records(org, "account", [{"accountid": account, "name": "synced"}],
                             from_server=True)
    return "synced"


def metadata_change(server: Server, account: str) -> None:
    with server.side.org("srv") as org:
        schema.add_attribute(org, "account", Attribute("new_rating", "integer"))


@pytest.mark.parametrize("write", [api_patch, api_delete, sync_write, metadata_change])
def test_a_write_between_two_reads_is_seen_by_the_second(
        server: Server, write: Callable[[Server, str], str | None]) -> None:
    http = server.session()
    url = server.root + "accounts?$top=12"  # every attribute: a new one shows too
    account = server.first_account()
    before = server.pages(http, url, prefer=PAGED)
    assert server.pages(http, url, prefer=PAGED) == before  # kept
    expected = write(server, account)
    after = server.pages(http, url, prefer=PAGED)
    by_id = {r["accountid"]: r for page in after for r in page["value"]}
    if write is api_delete:
        assert account not in by_id
    elif write is metadata_change:
        assert all("new_rating" in r for r in by_id.values())
    else:
        assert by_id[account]["name"] == expected


def test_users_never_share_a_kept_page_and_refusals_stay_refusals(server: Server) -> None:
    admin = server.session()
    kept = server.pages(admin)
    server.behind_the_store("UPDATE account SET name = 'behind' WHERE accountid = ?",
                            [server.first_account()])
    # The same request by another user of the org is built for them, not served kept...
    reader = server.pages(server.session(USER_EMAIL, USER_PASSWORD))
    assert names(reader)[server.first_account()] == "behind"
    assert server.pages(admin) == kept  # ...while the admin's own entry is still there.
    # A wrong password, another user's password, another org's admin: 401, never a page.
    url = server.root + "accounts?$select=name,accountid"
    for email, password in [(ADMIN_EMAIL, "wrong-password-1"), (USER_EMAIL, ADMIN_PASSWORD),
                            (OTHER_EMAIL, OTHER_PASSWORD)]:
        answer = server.session(email, password).get(url, headers={"Prefer": TRACKED},
                                                     timeout=30)
        assert answer.status_code == 401 and "value" not in answer.json()
    # The same request on org `other`'s root (no accounts) by its admin: its own answer.
    other = server.session(OTHER_EMAIL, OTHER_PASSWORD).get(
        f"{server.url}/odata/v4/other/accounts?$select=name,accountid",
        headers={"Prefer": TRACKED}, timeout=30).json()
    assert other["value"] == []
    # What a user may not do stays refused after the admin's read of the same resource.
    customize = server.root + "$customization/entities/account/attributes"
    body = {"logicalname": "new_score", "type": "integer"}
    reader_http = server.session(USER_EMAIL, USER_PASSWORD)
    assert admin.get(customize, timeout=30).status_code == 200
    for _ in range(2):
        assert reader_http.post(customize, json=body, timeout=30).status_code == 403


def test_an_org_made_again_under_the_same_name_never_gets_the_old_pages(server: Server
                                                                       ) -> None:
    http = server.session()
    old = names(server.pages(http))
    with server.side.app.app_context():
        registry.delete_org(get_db(), server.side.orgs_dir, "srv")
    server.side.create_org("srv")  # the same admin, template and counters' history...
    with server.side.org("srv") as org:
        seed_sales(org, accounts=30, seed=8)  # ...other records
    new = names(server.pages(http))
    assert len(new) == 30 and not set(new) & set(old)


def test_a_delta_request_after_a_change_sees_the_change(server: Server) -> None:
    http = server.session()
    delta = server.pages(http)[-1]["@odata.deltaLink"]
    assert http.get(delta, timeout=30).json()["value"] == []
    assert http.get(delta, timeout=30).json()["value"] == []  # kept
    account = server.first_account()
    api_patch(server, account)
    changes = http.get(delta, timeout=30).json()["value"]
    assert [(r["accountid"], r["name"]) for r in changes] == [(account, "patched")]
    api_delete(server, account)
    changes = http.get(delta, timeout=30).json()["value"]
    assert [r.get("id") for r in changes] == [account]


def test_the_cache_off_gives_the_same_answers(server: Server,
                                              portal_process: Callable[..., Any]) -> None:
    off = portal_process(server.side.instance, workers=1, env={"PORTAL_PAGE_CACHE": "false"})
    http = server.session()

    def read(base: str) -> Iterator[str]:
        """Status and body of every page of some reads (a refused one too), base URL out."""
        root = f"{base}/odata/v4/srv/"
        filtered = "contacts?$filter=firstname eq 'First 0'&$orderby=lastname desc&$count=true"
        for path, prefer in [("accounts", TRACKED), ("accounts", "odata.maxpagesize=7"),
                             ("accounts?$select=name", ""), (filtered, PAGED),
                             (filtered, TRACKED), ("leads", TRACKED)]:
            url: str | None = root + path
            while url:
                answer = http.get(url, headers={"Prefer": prefer}, timeout=30)
                yield f"{answer.status_code} {answer.text.replace(base, 'BASE')}"
                url = answer.json().get("@odata.nextLink")

    on_first, on_kept, cache_off = list(read(server.url)), list(read(server.url)), \
        list(read(off.url))
    assert on_first == on_kept == cache_off
    assert len(on_first) > 10


def request(sales_org: store.OrgDb, path: str, args: dict[str, str], method: str = "GET"
            ) -> ApiRequest:
    return ApiRequest(method=method, path=path, args=MultiDict(args), headers=Headers(),
                      body=b"", service_root="http://x/odata/v4/sales/", org=sales_org,
                      secret="s")


@pytest.mark.parametrize(("method", "path", "args", "kept"), [
    ("GET", "accounts", {"$select": "name"}, True),
    ("GET", "accounts", {"$filter": "name eq 'Today'"}, True),
    ("GET", "accounts", {"$filter": "Microsoft.Dynamics.CRM.Today(PropertyName='createdon')"},
     False),
    ("GET", "accounts", {"$filter": "microsoft.dynamics.crm.lastxhours(PropertyName="
                                    "'createdon',PropertyValue=2)"}, False),
    ("GET", "accounts", {"fetchXml": "<fetch/>"}, False),
    ("GET", "accounts(00000000-0000-4000-8000-000000000001)", {}, False),
    ("GET", "accounts/$count", {}, False),
    ("GET", "$metadata", {}, False),
    ("GET", "EntityDefinitions", {}, False),
    ("GET", "WhoAmI", {}, False),
    ("GET", "nosuchset", {}, False),
    ("GET", "", {}, False),
    ("POST", "accounts", {}, False),
])
def test_only_entity_set_reads_that_do_not_depend_on_the_clock_are_kept(
        sales_org: store.OrgDb, method: str, path: str, args: dict[str, str], kept: bool
) -> None:
    assert cacheable(request(sales_org, path, args, method)) is kept


@pytest.mark.parametrize(("name", "value"), [("PAGE_CACHE", "yes"), ("PAGE_CACHE_MB", "64")])
def test_a_mistyped_page_cache_setting_stops_the_start(tmp_path: Path, name: str,
                                                       value: str) -> None:
    with pytest.raises(InvalidSetting, match=f"setting {name} must be"):
        create_app({"TESTING": True, "INSTANCE_PATH": tmp_path, name: value})
