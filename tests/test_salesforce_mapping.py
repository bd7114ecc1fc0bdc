"""The Salesforce mapping layer (portal.backends.salesforce_mapping) on documented payloads.

Each test names the Salesforce developer-guide page its payload comes from
(tests/fixtures/salesforce/README.md lists them). The describes under
`composed/` are not from a page: the REST guide's describe example has only
the Id field, so those were written from the SOAP guide's Field tables.
"""

import json
from pathlib import Path
from typing import Any

import pytest

from portal.backends.salesforce_mapping import (
    collection_results,
    csv_rows,
    deleted_ids,
    error_from_answer,
    key_prefixes,
    limit_info,
    object_from_describe,
    option_value,
    option_values,
    query_page,
    record_body,
    salesforce_id,
    synced_objects,
    updated_ids,
)
from portal.errors import BackendError, CredentialsRefused, InvalidInput
from portal.orgs.metadata import SYSTEM_ATTRIBUTES
from portal.orgs.types import FROM_SALESFORCE, TYPES, from_salesforce

SYNCED = ["Account", "Contact", "Lead", "Task"]
FIXTURES = Path(__file__).parent / "fixtures" / "salesforce"


def payload(name: str) -> Any:
    """A fixture's decoded JSON."""
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def contact() -> Any:
    return object_from_describe(payload("composed/contact-describe.json"), SYNCED)


# ------------------------------------------------------------------ type table


@pytest.mark.parametrize(("salesforce", "ours"), [
    ("id", "uniqueidentifier"), ("string", "string"), ("email", "string"), ("phone", "string"),
    ("url", "string"), ("picklist", "picklist"), ("multipicklist", "string"),
    ("combobox", "string"), ("encryptedstring", "string"), ("textarea", "memo"),
    ("boolean", "boolean"), ("int", "integer"), ("long", "bigint"), ("double", "double"),
    ("currency", "money"), ("percent", "decimal"), ("date", "datetime"),
    ("datetime", "datetime"), ("reference", "lookup"),
])
def test_salesforce_field_types_read_through_the_type_table(salesforce: str, ours: str) -> None:
    # Field types: SOAP API Developer Guide, "Field Types" / "Primitive Data Types".
    kind = from_salesforce(salesforce)
    assert kind is TYPES[ours]
    assert salesforce in kind.salesforce  # one table: the name lives on the type itself


@pytest.mark.parametrize("unmodelled", ["address", "location", "base64", "time", "anyType",
                                        "complexvalue", None, 3])
def test_unmodelled_salesforce_types_are_skipped(unmodelled: Any) -> None:
    assert from_salesforce(unmodelled) is None


def test_the_salesforce_index_is_built_from_the_table() -> None:
    names = [n for t in TYPES.values() for n in t.salesforce]
    assert len(names) == len(set(names)) == len(FROM_SALESFORCE)


# ------------------------------------------------------------------------ ids


@pytest.mark.parametrize("documented", [
    "001D000000IRFmaIAH", "001D000000IomazIAB",  # dome-query.md
    "003RO0000035WQgYAM",  # resources-query
    "a00D0000008pQRAIA2",  # dome-get-deleted.md
    "a00D0000008pQR5IAM", "a00D0000008pQRGIA2", "a00D0000008pQRFIA2",  # dome-get-updated.md
    "001RM000003oLnnYAE", "003RM0000068xV6YAI",  # collections create
    "001xx000003DGb2AAG", "003xx000004TmiQAAS",  # collections update request
])
def test_documented_18_character_ids_keep_their_checksum(documented: str) -> None:
    assert salesforce_id(documented) == documented
    assert salesforce_id(documented[:15]) == documented  # 15 -> 18 adds the suffix
    # The suffix restores the case an 18-character id lost.
    assert salesforce_id(documented.lower()) == documented
    assert salesforce_id(documented.upper()) == documented


@pytest.mark.parametrize("bad", [
    "001900K0001pPuOAAU",  # errorcodes.htm: MALFORMED_ID "id value of incorrect type"
    "001xx000003DGb2999",  # collections update: MALFORMED_ID
    "001D000000IRFmaIAZ",  # suffix of another case pattern
    "001D000000IRFmaIA",  # 17 characters
    "001D000000IRFm", "", "001D000000IRFma-AH", "001D000000IRFmaIAH ", None, 1,
    "00000000000000000B",  # the suffix says an upper-case letter where a digit is
])
def test_malformed_ids_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="not a Salesforce id"):
        salesforce_id(bad)


# ------------------------------------------------------------------- metadata


def test_describe_global_lists_replicateable_queryable_objects() -> None:
    # https://developer.salesforce.com/docs/platform/api-rest/guide/dome-describeglobal.md
    body = payload("describe-global.response.json")
    assert synced_objects(body) == ["Account"]
    assert key_prefixes(body) == {"001": "Account"}
    account = body["sobjects"][0]
    body["sobjects"] += [dict(account, name="AccountHistory", replicateable=False),
                         dict(account, name="AccountFeed", queryable=False),
                         dict(account, name="Old", deprecatedAndHidden=True),
                         "not an object"]
    assert synced_objects(body) == ["Account"]


def test_documented_account_describe_is_an_entity() -> None:
    # https://developer.salesforce.com/docs/platform/api-rest/guide/dome-sobject-describe.md
    account = object_from_describe(payload("sobject-describe-account.response.json"), ["Account"])
    entity = account.entity
    assert (entity.logicalname, entity.displayname, entity.primaryidattribute) == (
        "account", "Account", "id")
    assert [a.logicalname for a in entity.attributes] == ["id", *SYSTEM_ATTRIBUTES]
    assert entity.attribute("id").type == "uniqueidentifier"
    assert account.fields == {"id": "Id"}
    assert account.createable == account.updateable == frozenset()
    assert account.key_prefix == "001"


def test_describe_fields_map_to_attributes(contact: Any) -> None:
    # composed/contact-describe.json, after the SOAP guide's DescribeSObjectResult Field table.
    entity = contact.entity
    types = {a.logicalname: a.type for a in entity.attributes if not a.issystem}
    assert types == {
        "accountid": "lookup", "lastname": "string", "firstname": "string", "title": "string",
        "email": "string", "phone": "string", "birthdate": "datetime", "leadsource": "picklist",
        "interests__c": "string", "description": "memo", "visits__c": "integer",
        "score__c": "double", "discount__c": "decimal", "budget__c": "money",
        "ratio__c": "decimal", "client_guid__c": "string", "origin__c": "string",
        "mailingcity": "string",
    }
    # address (compound, its parts are fields) and base64 are skipped.
    assert entity.attribute("mailingaddress") is None and entity.attribute("photo__c") is None
    attr = entity.attribute
    assert (attr("lastname").maxlength, attr("description").maxlength) == (80, 32000)
    assert attr("budget__c").precision == 2 and attr("discount__c").precision == 2
    assert attr("ratio__c").precision == 10  # scale 12: ours keeps 10
    assert attr("score__c").precision is None
    assert attr("accountid").targets == ["account"]
    assert attr("lastname").required and not attr("firstname").required
    # Computed fields are read-only: neither createable nor updateable.
    assert attr("name").issystem and attr("systemmodstamp").issystem
    assert entity.primarynameattribute == "name"
    assert contact.fields["client_guid__c"] == "Client_Guid__c"
    assert contact.external_ids == ["client_guid__c"]
    # A picklist is an option set with Salesforce's labels; its inactive value (Fax) stays
    # an option, so records that hold it still read. A multi-select picklist stays text.
    assert contact.picklists["leadsource"] == {v: option_value(v)
                                               for v in ("Web", "Phone Inquiry", "Fax")}
    assert [(o.value, o.label) for o in attr("leadsource").options] == [
        (option_value("Web"), "Web"), (option_value("Phone Inquiry"), "Phone Inquiry"),
        (option_value("Fax"), "Fax")]
    assert "interests__c" not in contact.picklists and not attr("interests__c").options
    assert "origin__c" in contact.createable and "origin__c" not in contact.updateable
    assert "name" not in contact.createable | contact.updateable


def test_polymorphic_reference_keeps_every_target() -> None:
    # composed/task-describe.json: WhoId points to a Contact or a Lead.
    task = object_from_describe(payload("composed/task-describe.json"), SYNCED)
    who = task.entity.attribute("whoid")
    assert who is not None and who.type == "lookup" and who.targets == ["contact", "lead"]
    assert task.entity.attribute("remindertime__c") is None  # time: not modelled
    # A combobox is free text with suggested values: text, not an option set.
    assert task.entity.attribute("subject").type == "string" and not task.picklists


def test_references_keep_only_synced_targets() -> None:
    # A lookup must point to an entity the client has: Lead not synced, Contact kept.
    task = object_from_describe(payload("composed/task-describe.json"), ["Contact"])
    assert task.entity.attribute("whoid").targets == ["contact"]
    # No target synced: the reference is skipped, not stored as a lookup to nothing.
    contact = object_from_describe(payload("composed/contact-describe.json"), ["Lead"])
    assert contact.entity.attribute("accountid") is None and "accountid" not in contact.fields


# -------------------------------------------------------------------- records


def test_query_page_without_ids_takes_them_from_the_record_urls() -> None:
    # https://developer.salesforce.com/docs/platform/api-rest/guide/dome-query.md
    account = object_from_describe(payload("sobject-describe-account.response.json"), ["Account"])
    page = query_page(account, payload("query-accounts.response.json"))
    assert page.done and page.next_url is None
    assert page.records == [{"id": "001D000000IRFmaIAH"}, {"id": "001D000000IomazIAB"}]
    assert page.versions == {} and page.deleted == []


def test_query_page_with_next_records_url(contact: Any) -> None:
    # https://developer.salesforce.com/docs/platform/api-rest/guide/resources-query
    page = query_page(contact, payload("query-contacts-next-records-url.response.json"))
    assert not page.done
    assert page.next_url == "/services/data/v66.0/query/01gRO0000016PIAYA2-500"
    assert page.records == [{"id": "003RO0000035WQgYAM", "name": "John Smith"}]


def test_query_rows_are_converted_and_deleted_rows_listed(contact: Any) -> None:
    # The documented row of resources-query with more of the composed Contact's fields.
    body = payload("query-contacts-next-records-url.response.json")
    row = body["records"][0]
    row.update({"SystemModstamp": "2013-05-07T22:07:19.000+0000", "Birthdate": "1980-02-29",
                "AccountId": "001d000000irfmaiah", "IsDeleted": False, "Visits__c": None,
                "Account": {"attributes": {"type": "Account"}, "Name": "Test 1"}})
    gone = dict(row, Id="003RM0000068xVCYAY", IsDeleted=True)
    body["records"].append(gone)
    page = query_page(contact, body)
    assert page.records == [{
        "id": "003RO0000035WQgYAM", "name": "John Smith",
        "systemmodstamp": "2013-05-07T22:07:19Z", "birthdate": "1980-02-29T00:00:00Z",
        "accountid": "001D000000IRFmaIAH", "isdeleted": False,
        "visits__c": None,
    }]
    assert page.versions == {"003RO0000035WQgYAM": "2013-05-07T22:07:19Z"}
    assert page.deleted == ["003RM0000068xVCYAY"]


@pytest.mark.parametrize("broken", [
    {"done": False, "records": []},  # not done, nowhere to continue
    {"done": True, "records": [{"attributes": {"type": "Contact"}, "Name": "x"}]},
    {"done": True, "records": [{"Id": "003RO0000035WQgYAZ"}]},
])
def test_query_answers_that_cannot_be_followed_are_backend_errors(contact: Any,
                                                                  broken: Any) -> None:
    with pytest.raises(BackendError):
        query_page(contact, broken)


def test_get_updated_gives_ids_and_the_window_end() -> None:
    # https://developer.salesforce.com/docs/platform/api-rest/guide/dome-get-updated.md
    answer = updated_ids(payload("get-updated.response.json"))
    assert answer.ids == ["a00D0000008pQR5IAM", "a00D0000008pQRGIA2", "a00D0000008pQRFIA2"]
    assert answer.latest_date_covered == "2013-05-08T21:20:00Z"
    assert answer.earliest_date_available is None


def test_get_deleted_gives_ids_and_both_window_ends() -> None:
    # https://developer.salesforce.com/docs/platform/api-rest/guide/dome-get-deleted.md
    answer = deleted_ids(payload("get-deleted.response.json"))
    assert answer.ids == ["a00D0000008pQRAIA2"]
    assert answer.latest_date_covered == "2013-05-08T21:20:00Z"
    assert answer.earliest_date_available == "2013-05-03T15:57:00Z"


def test_get_updated_without_a_window_end_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="latestDateCovered"):
        updated_ids({"ids": []})
    with pytest.raises(BackendError, match="invalid id"):
        deleted_ids({"deletedRecords": [{"id": "nope"}], "latestDateCovered": "2013-05-08"})


# --------------------------------------------------------------------- writes


def test_create_body_is_the_documented_request_record(contact: Any) -> None:
    # resources-composite-sobjects-collections-create.html, request body's Contact.
    documented = payload("collections/create.request.json")["records"][1]
    assert record_body(contact, {"lastname": "Johnson", "firstname": "Erica"}) == documented


def test_update_body_is_the_documented_request_record(contact: Any) -> None:
    # resources-composite-sobjects-collections-update.html, request body's Contact.
    documented = payload("collections/update.request.json")["records"][1]
    body = record_body(contact, {"id": "ignored", "title": "Lead Engineer"},
                       key="003xx000004TmiQAAS")
    assert body == documented


def test_write_values_take_salesforce_forms(contact: Any) -> None:
    body = record_body(contact, {"birthdate": "1980-02-29T00:00:00Z",
                                 "accountid": "001d000000irfmaiah", "email": None})
    assert body == {"attributes": {"type": "Contact"}, "Birthdate": "1980-02-29",
                    "AccountId": "001D000000IRFmaIAH", "Email": None}


@pytest.mark.parametrize(("values", "key", "refused"), [
    ({"origin__c": "web"}, "003xx000004TmiQAAS", "origin__c"),  # createable, not updateable
    ({"name": "John Smith"}, None, "name"),  # computed: never writable
    ({"systemmodstamp": "2013-05-07T22:07:19Z"}, "003xx000004TmiQAAS", "systemmodstamp"),
    ({"nosuchfield": 1}, None, "nosuchfield"),
])
def test_fields_the_operation_may_not_set_are_refused(contact: Any, values: Any, key: Any,
                                                      refused: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        record_body(contact, values, key=key)
    assert caught.value.field == refused


@pytest.mark.parametrize(("values", "key", "refused"), [
    ({"birthdate": "29 Feb 1980"}, None, "birthdate"),
    ({"accountid": "9b2f6a4e-0c1d-4e3a-9c8d-2f4e6a8b0c1d"}, None, "accountid"),  # a GUID
    ({"title": "x"}, "not-an-id", "id"),
])
def test_values_salesforce_cannot_take_are_refused(contact: Any, values: Any, key: Any,
                                                   refused: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        record_body(contact, values, key=key)
    assert caught.value.field == refused


def test_an_update_key_is_sent_in_its_18_character_form(contact: Any) -> None:
    assert record_body(contact, {}, key="003xx000004TmiQ")["id"] == "003xx000004TmiQAAS"


def test_a_bad_value_in_an_answer_is_a_backend_error(contact: Any) -> None:
    row = {"Id": "003RO0000035WQgYAM", "Birthdate": "someday"}
    with pytest.raises(BackendError, match="Contact.Birthdate"):
        query_page(contact, {"done": True, "records": [row]})


def test_a_createable_only_field_may_be_set_on_create(contact: Any) -> None:
    assert record_body(contact, {"origin__c": "web"})["Origin__c"] == "web"


@pytest.mark.parametrize(("name", "expected"), [
    # resources-composite-sobjects-collections-create.html
    ("create-success", [("ok", "001RM000003oLnnYAE"), ("ok", "003RM0000068xV6YAI")]),
    ("create-partial-failure-allornone-false", [("error", None), ("ok", "003RM0000068xVCYAY")]),
    ("create-failure-allornone-true", [("error", None), ("error", None)]),
    # resources-composite-sobjects-collections-update.html
    ("update-success", [("ok", "001RM000003oCprYAE"), ("ok", "003RM0000068og4YAA")]),
    ("update-partial-failure-allornone-false", [("ok", "001RM000003oCprYAE"), ("error", None)]),
    ("update-failure-allornone-true", [("error", "001RM000003oCprYAE"), ("error", None)]),
    # resources-composite-sobjects-collections-upsert.html
    ("upsert-success", [("ok", "001xx0000004GxDAAU"), ("ok", "001xx0000004GxEAAU")]),
    ("upsert-partial-failure-allornone-false", [("ok", "001xx0000004GxDAAU"), ("error", None)]),
    ("upsert-failure-allornone-true", [("error", "001xx0000004GxDAAU"), ("error", None)]),
])
def test_collection_results_are_write_results(name: str, expected: Any) -> None:
    results = collection_results(payload(f"collections/{name}.response.json"), 2)
    assert [(r.status, key) for r, key in results] == expected
    for result, _ in results:
        assert (result.message is None) == (result.status == "ok")


def test_collection_errors_read_as_codes_and_messages() -> None:
    # resources-composite-sobjects-collections-update.html, allOrNone true.
    (first, _), (second, _) = collection_results(
        payload("collections/update-failure-allornone-true.response.json"), 2)
    assert first.message is not None and first.message.startswith(
        "ALL_OR_NONE_OPERATION_ROLLED_BACK: Record rolled back")
    assert second.message == ("MALFORMED_ID: Contact ID: id value of incorrect type: "
                              "001xx000003DGb2999 (fields: Id)")


def test_a_deleted_record_is_missing() -> None:
    body = [{"success": False, "errors": [{"statusCode": "ENTITY_IS_DELETED",
                                           "message": "entity is deleted", "fields": []}]}]
    [(result, key)] = collection_results(body, 1)
    assert (result.status, key) == ("missing", None)


@pytest.mark.parametrize("body", [[], {"errors": []}, None])
def test_collection_answers_not_one_per_record_are_backend_errors(body: Any) -> None:
    with pytest.raises(BackendError, match="results to 1 records"):
        collection_results(body, 1)


# ----------------------------------------------------------- limits and errors


def test_limit_info_header_gives_used_and_limit() -> None:
    # https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm
    lines = [line.split(": ", 1)[1] for line in payload("headers/sforce-limit-info.examples.json")]
    bursts, plain, per_app = map(limit_info, lines)
    assert bursts and (bursts.used, bursts.limit, bursts.others) == (
        10018, 100000, {"api-bursts": (1, 750)})
    assert plain and (plain.used, plain.limit, plain.remaining) == (10018, 100000, 89982)
    assert per_app and (per_app.used, per_app.limit) == (25, 5000)
    assert per_app.others == {"per-app-api-usage": (17, 250)}


def test_limit_info_of_a_documented_response_head() -> None:
    # atlas.en-us.218.0 headers_api_usage.htm: a record GET's response headers.
    head = (FIXTURES / "headers/record-get-response-headers.http").read_text().splitlines()
    headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    info = limit_info(headers["Sforce-Limit-Info"])
    assert info and (info.used, info.limit) == (18, 5000)
    assert limit_info(None) is None and limit_info("api-bursts=1/750") is None


@pytest.mark.parametrize(("name", "status", "message"), [
    # https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm
    ("malformed-id", 400, "Salesforce answered HTTP 400: MALFORMED_ID: Account ID: id value of "
                          "incorrect type: 001900K0001pPuOAAU (fields: Id)"),
    ("not-found", 404, "Salesforce answered HTTP 404: NOT_FOUND: The requested resource does "
                       "not exist"),
    # https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/dome_sobject_create.htm
    ("invalid-field-create", 400, "Salesforce answered HTTP 400: INVALID_FIELD: The Id field "
                                  "should not be specified in the sobject data."),
])
def test_documented_error_bodies_are_backend_errors(name: str, status: int,
                                                    message: str) -> None:
    error = error_from_answer(status, payload(f"errors/{name}.response.json"))
    assert type(error) is BackendError
    assert error.message == message


@pytest.mark.parametrize(("status", "body"), [
    # Not documented as a body (errorcodes.htm: 401, "the message and errorCode"): our shape.
    (401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
    (500, [{"message": "Invalid username or password", "errorCode": "INVALID_LOGIN"}]),
    (401, ""),
    # OAuth 2.0 token endpoint refusals (RFC 6749 section 5.2 error body).
    (400, {"error": "invalid_grant", "error_description": "authentication failure"}),
    (400, {"error": "invalid_client_id", "error_description": "client identifier invalid"}),
])
def test_refused_sessions_and_logins_are_credentials_refused(status: int, body: Any) -> None:
    error = error_from_answer(status, body)
    assert isinstance(error, CredentialsRefused)
    assert error.message.startswith("Salesforce")


def test_other_answers_are_backend_errors_with_readable_reasons() -> None:
    limit = error_from_answer(403, [{"message": "TotalRequests Limit exceeded.",
                                     "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    assert type(limit) is BackendError and "REQUEST_LIMIT_EXCEEDED" in limit.message
    grant = error_from_answer(400, {"error": "unsupported_grant_type"})
    assert type(grant) is BackendError and grant.message == (
        "Salesforce refused: unsupported_grant_type")
    html = error_from_answer(503, "<html>down</html>")
    assert type(html) is BackendError and html.message == (
        "Salesforce answered HTTP 503: <html>down</html>")
    assert error_from_answer(500, None).message == "Salesforce answered HTTP 500"


# ----------------------------------------------------------------- Bulk API 2.0


def test_bulk_query_csv_rows_take_the_json_forms_of_a_query(contact: Any) -> None:
    # composed/bulk-query-results.csv, in the shape of the Bulk API 2.0 guide's
    # "Get Results for a Query Job" (text values; empty is null).
    rows = csv_rows(contact, (FIXTURES / "composed/bulk-query-results.csv").read_text())
    assert rows[0] == {"Id": "003RO0000035WQgYAM", "IsDeleted": False, "LastName": "Smith",
                       "Visits__c": 3, "Score__c": 1.5, "Birthdate": "1980-02-29",
                       "AccountId": "001D000000IRFmaIAH",
                       "SystemModstamp": "2013-05-07T22:07:19.000Z"}
    assert rows[1]["IsDeleted"] is True and rows[1]["Visits__c"] is None
    page = query_page(contact, {"done": True, "records": rows})
    assert [r["id"] for r in page.records] == ["003RO0000035WQgYAM"]
    assert page.records[0]["birthdate"] == "1980-02-29T00:00:00Z"
    assert page.deleted == ["003RM0000068xVCYAY"]


def test_a_bad_bulk_value_is_a_backend_error(contact: Any) -> None:
    text = '"Id","IsDeleted","Visits__c"\n"003RO0000035WQgYAM","maybe","x"\n'
    with pytest.raises(BackendError, match="Bulk API answered a bad Contact.IsDeleted"):
        csv_rows(contact, text)


# --------------------------------------------------------------- picklists


def test_option_numbers_are_derived_from_the_value_alone() -> None:
    # Pinned: a change of the derivation would renumber every client's options.
    assert option_value("Banking") == 966034572
    assert option_values(["Retail", "Banking"]) == {"Banking": 966034572, "Retail": 1244043652}
    # A value added later, or a value gone, leaves the others' numbers as they were.
    assert option_values(["Retail", "Banking", "Energy"])["Banking"] == 966034572
    assert option_values(["Retail"])["Retail"] == 1244043652


def test_values_whose_hashes_collide_get_distinct_numbers() -> None:
    # Found by search: the two values' first 31-bit numbers are the same.
    first, second = "Value 69227", "Value 87863"
    assert option_value(first) == option_value(second)
    numbers = option_values([second, first])
    assert numbers[first] == option_value(first)  # the first in sorted order keeps it
    assert numbers[second] == option_value(second, 1) != numbers[first]
    assert all(1 <= n <= 2**31 - 1 for n in numbers.values())


def test_picklist_values_read_as_numbers_and_write_back_as_text(contact: Any) -> None:
    # composed/contact-describe.json's LeadSource; a query row as dome-query.md shows one.
    row = {"Id": "003RO0000035WQgYAM", "LeadSource": "Phone Inquiry",
           "Interests__c": "golf;sailing"}
    record = query_page(contact, {"done": True, "records": [row]}).records[0]
    assert record["leadsource"] == option_value("Phone Inquiry")
    assert record["interests__c"] == "golf;sailing"
    body = record_body(contact, {"leadsource": option_value("Fax"), "interests__c": "golf"})
    assert (body["LeadSource"], body["Interests__c"]) == ("Fax", "golf")
    assert record_body(contact, {"leadsource": None})["LeadSource"] is None


def test_a_value_the_describe_does_not_list_is_numbered_after_the_listed_ones(contact: Any
                                                                              ) -> None:
    # An unrestricted picklist takes any value through the API.
    row = {"Id": "003RO0000035WQgYAM", "LeadSource": "Trade Show"}
    record = query_page(contact, {"done": True, "records": [row]}).records[0]
    assert record["leadsource"] == option_value("Trade Show")
    assert record_body(contact, {"leadsource": record["leadsource"]})["LeadSource"] == "Trade Show"


@pytest.mark.parametrize("bad", [7, "7", 1.5, True, "Trade Show"])
def test_an_option_salesforce_has_no_value_for_is_refused(contact: Any, bad: Any) -> None:
    with pytest.raises(InvalidInput, match="LeadSource of Contact: option") as caught:
        record_body(contact, {"leadsource": bad, "lastname": "Smith"})
    assert caught.value.field == "leadsource"


def test_a_picklist_without_values_stays_text() -> None:
    describe = payload("composed/contact-describe.json")
    for item in describe["fields"]:
        if item["name"] == "LeadSource":
            item["picklistValues"] = []
    entity = object_from_describe(describe, SYNCED)
    assert entity.entity.attribute("leadsource").type == "string"
    assert "leadsource" not in entity.picklists
