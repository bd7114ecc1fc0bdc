"""Update Client Metadata's preview: what the update would change, computed before it does.

The preview is a pure function of the client's and the server's entities; the
test checks it against what update_client_metadata then really does.
"""

from dataclasses import replace
from pathlib import Path

from portal.orgs import records, store
from portal.orgs.metadata import Attribute, Entity
from portal.orgs.schema import add_entities
from portal.orgs.templates import template_entities
from portal.sync.metadata import count_dropped_data, preview_update, update_client_metadata


def sales_file(folder: Path, name: str) -> store.OrgDb:
    org = store.create_org_file(folder, name)
    add_entities(org, template_entities("sales"))
    return org


def changed_server(server: store.OrgDb) -> list[Entity]:
    """The sales entities with one of each change: new entity and attribute, a longer name,
    a removed attribute, new labels; competitor and leadcompetitor gone."""
    out = []
    for entity in server.entities().values():
        if entity.logicalname in ("competitor", "leadcompetitor"):
            continue
        attributes = [replace(a) for a in entity.attributes]
        if entity.logicalname == "account":
            attributes = [replace(a, maxlength=200) if a.logicalname == "name" else a
                          for a in attributes if a.logicalname != "telephone1"]
            attributes.append(Attribute("rating", "integer", "Rating", {"1033": "Rating"}))
            entity = replace(entity, displayname="Company", labels={"1033": "Company"})
        out.append(replace(entity, attributes=attributes))
    out.append(Entity("visit", "Visit", {"1033": "Visit"}, "visitid", "title", "visits",
                      attributes=[Attribute("title", "string", "Title", maxlength=50)]))
    return out


def test_metadata_preview_lists_each_change_and_the_data_a_removal_drops(tmp_path: Path) -> None:
    with sales_file(tmp_path, "srv") as server, sales_file(tmp_path, "cli") as client:
        records.create_record(client, "account", {"name": "A", "telephone1": "123"})
        records.create_record(client, "account", {"name": "B"})
        for i in range(3):
            records.create_record(client, "competitor", {"name": f"C{i}"})
        known = set(client.entities())
        target = changed_server(server)
        preview = count_dropped_data(client, preview_update(client.entities(), target, known))

        assert preview.new_entities == ["visit"]
        assert preview.relabelled_entities == ["account"]
        assert [(a.entity, a.attribute) for a in preview.new_attributes] == [("account", "rating")]
        assert [(a.entity, a.attribute, a.what) for a in preview.changed_attributes] == [
            ("account", "name", ["length"])]
        assert [(a.entity, a.attribute, a.values) for a in preview.removed_attributes] == [
            ("account", "telephone1", 1)]
        assert preview.removed_entities == {"competitor": 3, "leadcompetitor": 0}
        assert preview  # something to do

        done = update_client_metadata(client, target, known)
        assert sorted(done) == sorted([
            "added entity visit", "updated labels of entity account",
            "added attribute account.rating", "changed attribute account.name",
            "removed attribute account.telephone1", "removed entity competitor",
            "removed entity leadcompetitor"])
        # Once applied, there is nothing left to preview.
        assert not preview_update(client.entities(), target, known - {"competitor",
                                                                      "leadcompetitor"})


def test_metadata_preview_keeps_the_clients_own_entities(tmp_path: Path) -> None:
    with sales_file(tmp_path, "srv") as server, sales_file(tmp_path, "cli") as client:
        # The server has only account; the client's other entities never came from it.
        target = [server.entity("account")]
        preview = preview_update(client.entities(), target, {"account"})
        assert not preview and preview.removed_entities == {}
