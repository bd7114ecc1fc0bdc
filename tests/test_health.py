"""/health and the error pages."""

from portal import create_app


def test_health_ok_with_database_and_redis(client, redis) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "database": "ok", "redis": "ok"}


def test_health_503_when_redis_is_unreachable(tmp_path) -> None:
    app = create_app({"TESTING": True, "INSTANCE_PATH": tmp_path, "SECRET_KEY": "x",
                      "REDIS_URL": "unix://" + str(tmp_path / "nothing-here.sock")})
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert response.json["redis"].startswith("error")
    assert response.json["database"] == "ok"


def test_home_page_and_404_page(client) -> None:
    home = client.get("/")
    assert home.status_code == 200 and b"CRM Sync" in home.data
    # Dynamics is the main path, offered as such (issue 11), never "coming soon".
    assert b"Dynamics 365 / Dataverse environment" in home.data
    assert b"coming soon" not in home.data.lower()
    missing = client.get("/no/such/page")
    assert missing.status_code == 404
    assert b"404" in missing.data and b"Traceback" not in missing.data
    as_json = client.get("/no/such/page", headers={"Accept": "application/json"})
    assert as_json.status_code == 404 and as_json.json["error"]["message"]


def test_secret_key_is_generated_once_per_instance(tmp_path) -> None:
    first = create_app({"INSTANCE_PATH": tmp_path})
    second = create_app({"INSTANCE_PATH": tmp_path})
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert len(first.config["SECRET_KEY"]) == 64
