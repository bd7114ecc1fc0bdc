"""CSDL JSON (`csdl_json`) gives the same model as CSDL XML, read from real servers.

SAP CAP 9.9.3 (tests/cap) and odatapy 5.3.0 (tests/odatapy_server.py) both serve
`$metadata` in either form (`Accept: application/json` or `application/xml`): what
each reader makes of the two documents of one service must be equal, down to
facets, enums, lookups, Core annotations and Capabilities. The format is OASIS
"OData CSDL JSON Representation Version 4.01"; the bad documents below are ours.
"""

import dataclasses

import orjson
import pytest
import requests

from portal.backends import odata_mapping
from portal.backends.csdl_json import read_csdl_json
from portal.backends.csdl_metadata import MAX_DEPTH, MAX_ELEMENTS, read_csdl
from portal.errors import BackendError
from tests.server_sides import odatapy_side


def _both_forms(url: str, auth: tuple[str, str]) -> tuple[bytes, bytes]:
    """The service's `$metadata` as XML and as JSON, each checked to be what was asked."""
    forms = []
    for accept in ("application/xml", "application/json"):
        answer = requests.get(f"{url}$metadata", auth=auth, headers={"Accept": accept},
                              timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"].startswith(accept), answer.headers
        forms.append(answer.content)
    return forms[0], forms[1]


def _same_model(xml: bytes, json: bytes) -> None:
    from_xml, from_json = read_csdl(xml), read_csdl_json(json)
    assert from_json.entity_sets == from_xml.entity_sets
    assert from_json.enums == from_xml.enums
    assert from_json.capabilities == from_xml.capabilities
    for name, entity_type in from_xml.entity_types.items():
        theirs = from_json.entity_types[name]
        assert theirs.keys == entity_type.keys, name
        assert theirs.lookups == entity_type.lookups, name
        # Properties in either order (a JSON object's members are read in document order).
        assert sorted(theirs.properties, key=lambda p: p.name) == sorted(
            entity_type.properties, key=lambda p: p.name), name
    assert set(from_json.entity_types) == set(from_xml.entity_types)
    # And so the same client metadata: what a connect would make of either.
    maps = [odata_mapping.entity_maps(s, timestamp_property=None, client_id_property=None)
            for s in (from_xml, from_json)]
    assert {n: dataclasses.asdict(m.entity) for n, m in maps[0].items()} == \
        {n: dataclasses.asdict(m.entity) for n, m in maps[1].items()}


def test_csdl_json_of_sap_cap_is_the_model_of_its_xml(cap_server) -> None:
    cap = cap_server()
    xml, json = _both_forms(cap.url, cap.auth)
    _same_model(xml, json)
    service = read_csdl_json(json)
    assert any(p.computed for t in service.entity_types.values() for p in t.properties)
    assert any(t.lookups for t in service.entity_types.values())


def test_csdl_json_of_odatapy_is_the_model_of_its_xml() -> None:
    with odatapy_side() as side:
        xml, json = _both_forms(side.url, (side.username, side.password))
    _same_model(xml, json)
    assert read_csdl_json(json).version == "4.01"


def test_backend_reads_a_service_that_serves_only_json_csdl(cap_server) -> None:
    """A service answering `$metadata` in JSON only: the backend's entities are the XML's."""
    from portal.backends.odata_v4 import ODataV4Backend

    cap = cap_server()
    _, json = _both_forms(cap.url, cap.auth)
    only_json = _JsonOnly(cap.url, json)
    try:
        backend = ODataV4Backend(only_json.url, *cap.auth, allow_private=True)
        from_json = backend.read_metadata()
        backend = ODataV4Backend(cap.url, *cap.auth, allow_private=True)
        assert [dataclasses.asdict(e) for e in from_json] == \
            [dataclasses.asdict(e) for e in backend.read_metadata()]
        assert only_json.served == ["application/json"]
    finally:
        only_json.stop()


class _JsonOnly:
    """A loopback HTTP server whose `$metadata` is CSDL JSON only; other paths go to CAP."""

    def __init__(self, upstream: str, json: bytes) -> None:
        import http.server
        import threading

        served = self.served = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path.split("?")[0].endswith("$metadata"):
                    served.append("application/json")
                    body, content_type = json, "application/json"
                else:
                    answer = requests.get(upstream + self.path.split("/", 2)[-1],
                                          headers={"Authorization":
                                                   self.headers.get("Authorization", "")},
                                          timeout=30)
                    body, content_type = answer.content, answer.headers["Content-Type"]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/odata/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _document(**schema: object) -> bytes:
    return orjson.dumps({"$Version": "4.0", "$EntityContainer": "Ns.C", "Ns": schema})


@pytest.mark.parametrize(("content", "message"), [
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nests deeper than"),
    (orjson.dumps({"$Version": "4.0", "Ns": {f"E{i}": {} for i in range(MAX_ELEMENTS)}}),
     "more than"),
    (b"{not json", "not valid JSON"),
    (b'{"Ns": {}}', "not OData CSDL JSON"),
    (orjson.dumps({"$Version": "3.0"}), "CSDL version '3.0'"),
    (_document(E={"$Kind": "EnumType", "A": "one"}), "not an integer"),
    (_document(C={"$Kind": "EntityContainer", "S": {"$Collection": True, "$Type": "Ns.T"}}),
     "does not declare"),
    (_document(T={"$Kind": "EntityType", "$BaseType": "Ns.Gone", "$Key": ["id"]}),
     "not declared"),
])
def test_bad_csdl_json_is_refused_by_name(content: bytes, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        read_csdl_json(content)
