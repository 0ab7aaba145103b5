"""The organizer HTTP API, as the contract states it, against a real ``checkin server``."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import CHECKIN
from tests.system import ADMIN, Server, free_port, process_env, store_dump, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_database):
    server = Server(tmp_path_factory.mktemp("api") / "server", database=module_database).start()
    yield server
    server.kill()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_sessions_are_created_updated_and_deleted_only_without_registrants(server) -> None:
    sid = new_id("s")
    created = server.api("PUT", f"/api/sessions/{sid}",
                         {"name": "Keynote", "validate_registrants": True,
                          "starts_at": "2026-11-28T09:00:00+01:00"}, expect=201)
    assert created["created"] is True
    updated = server.api("PUT", f"/api/sessions/{sid}",
                         {"name": "Keynote (room B)", "validate_registrants": False}, expect=200)
    assert updated["name"] == "Keynote (room B)"
    listed = {s["session_id"]: s for s in server.api("GET", "/api/sessions", expect=200)}
    assert listed[sid]["validate_registrants"] is False and listed[sid]["starts_at"] is None

    server.api("POST", "/api/attendees", [{"code": "K1", "name": "Kim"}], expect=200)
    server.api("PUT", f"/api/sessions/{sid}/registrants/K1", expect=201)
    refused = server.client.delete(f"/api/sessions/{sid}")
    assert refused.status_code == 409
    assert "registrant" in refused.json()["error"] and "remove" in refused.json()["error"]

    server.api("DELETE", f"/api/sessions/{sid}/registrants/K1", expect=204)
    server.api("DELETE", f"/api/sessions/{sid}", expect=204)
    assert server.client.delete(f"/api/sessions/{sid}").status_code == 404
    assert sid not in {s["session_id"] for s in server.api("GET", "/api/sessions")}


def test_attendees_are_upserted_in_bulk(server) -> None:
    codes = [new_id("P") for _ in range(3)]
    body = [{"code": c, "name": f"Person {c}"} for c in codes]
    assert server.api("POST", "/api/attendees", body, expect=200) == {"created": 3,
                                                                     "updated": 0}
    body[0]["email"] = "p@example.org"
    more = [*body, {"code": "Q9" + codes[0], "name": "Q"}]
    assert server.api("POST", "/api/attendees", more, expect=200) == {"created": 1,
                                                                     "updated": 3}


def test_registrants_must_be_attendees_of_an_existing_session(server) -> None:
    sid = new_id("s")
    server.api("PUT", f"/api/sessions/{sid}", {"name": "T", "validate_registrants": True},
               expect=201)
    missing = server.client.put(f"/api/sessions/{sid}/registrants/NOBODY-{sid}")
    assert missing.status_code == 404 and "attendee" in missing.json()["error"]
    assert server.client.put("/api/sessions/no-such-session/registrants/K1").status_code == 404
    server.api("POST", "/api/attendees", [{"code": "url/like:code", "name": "U"}], expect=200)
    assert server.api("PUT", f"/api/sessions/{sid}/registrants/url/like:code",
                      expect=201)["code"] == "url/like:code"
    assert server.api("PUT", f"/api/sessions/{sid}/registrants/url/like:code",
                      expect=200)["created"] is False  # idempotent
    gone = server.client.delete(f"/api/sessions/{sid}/registrants/K1")
    assert gone.status_code == 404 and "not a registrant" in gone.json()["error"]


def test_devices_get_a_token_once_and_it_is_stored_hashed(server) -> None:
    sid, did = new_id("s"), new_id("door")
    server.api("PUT", f"/api/sessions/{sid}", {"name": "T", "validate_registrants": False},
               expect=201)
    created = server.api("PUT", f"/api/devices/{did}", {"session_id": sid}, expect=201)
    token = created["token"]
    assert len(token) >= 40
    again = server.api("PUT", f"/api/devices/{did}", {"session_id": sid}, expect=200)
    assert "token" not in again
    dump = store_dump(server.store_location)
    assert token not in dump
    devices = {d["device_id"]: d for d in server.api("GET", "/api/devices", expect=200)}
    assert devices[did]["session_id"] == sid and devices[did]["connected"] is False
    assert server.client.put(f"/api/devices/{did}",
                             json={"session_id": "no-such-session"}).status_code == 404
    server.api("DELETE", f"/api/devices/{did}", expect=204)
    assert server.client.delete(f"/api/devices/{did}").status_code == 404
    reprovisioned = server.api("PUT", f"/api/devices/{did}", {"session_id": sid}, expect=201)
    assert reprovisioned["token"] != token


def test_attendance_has_the_contract_shape(server) -> None:
    sid = new_id("s")
    server.api("PUT", f"/api/sessions/{sid}", {"name": "T", "validate_registrants": True},
               expect=201)
    server.api("POST", "/api/attendees", [{"code": "R1", "name": "R"}], expect=200)
    server.api("PUT", f"/api/sessions/{sid}/registrants/R1", expect=201)
    attendance = server.api("GET", f"/api/sessions/{sid}/attendance", expect=200)
    assert attendance["registered"] == 1
    assert (attendance["admitted"], attendance["rejected"], attendance["scans"]) == (0, 0, [])
    assert server.client.get("/api/sessions/nope/attendance").status_code == 404


def test_a_session_capacity_is_an_integer_or_null(server) -> None:
    sid = new_id("s")
    created = server.api("PUT", f"/api/sessions/{sid}",
                         {"name": "Room", "validate_registrants": False, "capacity": 40},
                         expect=201)
    assert created["capacity"] == 40
    listed = {s["session_id"]: s for s in server.api("GET", "/api/sessions")}
    assert listed[sid]["capacity"] == 40
    for bad in (-1, 1.5, "40", True, 10_000_001):
        answer = server.client.put(f"/api/sessions/{sid}", json={
            "name": "Room", "validate_registrants": False, "capacity": bad})
        assert answer.status_code == 400, bad
        assert "capacity" in answer.json()["error"] and "integer" in answer.json()["error"]
    assert server.api("PUT", f"/api/sessions/{sid}", {"name": "Room", "validate_registrants":
                                                       False, "capacity": None})["capacity"] is None
    server.api("PUT", f"/api/sessions/{sid}", {"name": "Room", "validate_registrants": False,
                                               "capacity": 5})
    server.api("PUT", f"/api/sessions/{sid}", {"name": "Room", "validate_registrants": False})
    listed = {s["session_id"]: s for s in server.api("GET", "/api/sessions")}
    assert listed[sid]["capacity"] is None  # left out: no limit, as null
    server.api("PUT", f"/api/sessions/{sid}", {"name": "Room", "validate_registrants": False,
                                               "capacity": 0}, expect=200)
    listed = {s["session_id"]: s for s in server.api("GET", "/api/sessions")}
    assert listed[sid]["capacity"] == 0


def test_attendance_adds_the_doors_acting_as_one(server) -> None:
    sid = new_id("s")
    server.api("PUT", f"/api/sessions/{sid}", {"name": "T", "validate_registrants": False},
               expect=201)
    attendance = server.api("GET", f"/api/sessions/{sid}/attendance", expect=200)
    assert {k: attendance[k] for k in ("inside", "overrides", "over_capacity",
                                       "double_admissions", "time_in_session")} == {
        "inside": 0, "overrides": 0, "over_capacity": [], "double_admissions": [],
        "time_in_session": {}}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {ADMIN}"},
                                     {"Authorization": "Bearer"}])
def test_the_admin_api_refuses_requests_without_the_admin_token(server, headers) -> None:
    for method, path in [("GET", "/api/sessions"), ("PUT", "/api/sessions/x"),
                         ("POST", "/api/attendees"), ("PUT", "/api/devices/d"),
                         ("GET", "/api/sessions/x/attendance"), ("DELETE", "/api/devices/d")]:
        answer = httpx.request(method, server.url + path, headers=headers, json={})
        assert answer.status_code == 401, (method, path)
        assert "admin token" in answer.json()["error"]
        assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "body", "words"), [
    ("PUT", "/api/sessions/s", {"name": "x"}, "validate_registrants is missing"),
    ("PUT", "/api/sessions/s", {"name": 3, "validate_registrants": True}, "name = 3"),
    ("PUT", "/api/sessions/s", {"name": "x", "validate_registrants": "yes"}, "true or false"),
    ("PUT", "/api/sessions/s", {"name": "x", "validate_registrants": True, "starts_at": "9am"},
     "ISO 8601"),
    ("PUT", "/api/sessions/s", {"name": "x", "validate_registrants": True, "room": 1},
     "unknown key"),
    ("PUT", "/api/sessions/s", {"name": "x", "validate_registrants": True,
                                "starts_at": "2026-01-02T10:00:00Z",
                                "ends_at": "2026-01-02T09:00:00Z"}, "before starts_at"),
    ("PUT", "/api/sessions/s", [1], "expected a JSON object"),
    ("POST", "/api/attendees", {"code": "A"}, "expected a JSON list"),
    ("POST", "/api/attendees", [{"code": "has space", "name": "x"}], "attendee 0: code"),
    ("POST", "/api/attendees", [{"code": "A", "name": "x"}, {"name": "y"}],
     "attendee 1: code is missing"),
    ("PUT", "/api/devices/d", {"session_id": "../etc"}, "session_id"),
    ("PUT", "/api/sessions/..etc", {"name": "x", "validate_registrants": True},
     "session_id"),
    ("PUT", "/api/sessions/s/registrants/bad%00code", None, "code"),
    # SQLite would keep a NUL, PostgreSQL cannot: a 400 on both, never a 503 on one.
    ("POST", "/api/attendees", [{"code": "A", "name": "Ann\u0000"}],
     'attendee 0: name = "Ann\\u0000": expected a string of at most 200 characters without NUL'),
    ("PUT", "/api/sessions/s", {"name": "Talk\u0000", "validate_registrants": True},
     "without NUL"),
])
def test_malformed_requests_get_a_400_naming_the_problem(server, method, path, body,
                                                         words) -> None:
    answer = server.client.request(method, path, json=body)
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]


def test_unknown_routes_and_methods_answer_in_json(server) -> None:
    traversal = server.client.put("/api/sessions/..%2F..%2Fetc", json={})
    assert traversal.status_code == 404 and "no such route" in traversal.json()["error"]
    wrong_method = server.client.post("/api/sessions/s1", json={})
    assert wrong_method.status_code == 405 and "POST" in wrong_method.json()["error"]


def test_bodies_that_are_not_json_or_too_large_are_refused(server) -> None:
    answer = server.client.post("/api/attendees", content=b"{not json")
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
    answer = server.client.post("/api/attendees", content=b"[" * 100_000)
    assert answer.status_code == 400
    huge = b"[" + b'{"code":"A","name":"' + b"x" * (33 << 20) + b'"}]'
    answer = server.client.post("/api/attendees", content=huge)
    assert answer.status_code == 400 and "larger than" in answer.json()["error"]
    assert server.client.get("/api/health").status_code == 200


def test_without_the_environment_variable_the_server_makes_and_keeps_a_token(tmp_path) -> None:
    env = process_env()
    del env["CHECKIN_ADMIN_TOKEN"]
    port = free_port()
    log = tmp_path / "server.log"
    process = subprocess.Popen([*CHECKIN, "server", "--data", str(tmp_path / "data"), "--port",
                                str(port)], env=env, stderr=log.open("w"))
    try:
        token_file = tmp_path / "data" / "admin-token"
        wait_for(lambda: "admin token" in log.read_text(), what="start-up message")
        assert str(token_file) in log.read_text()
        token = token_file.read_text().strip()
        assert oct(os.stat(token_file).st_mode & 0o777) == "0o600"

        def answers() -> int:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/sessions",
                                 headers={"Authorization": f"Bearer {token}"}).status_code
            except httpx.TransportError:
                return 0

        assert wait_for(answers, what="server answering") == 200
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0
    assert "Traceback" not in log.read_text()


def test_the_server_says_clearly_when_its_data_dir_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    done = subprocess.run([*CHECKIN, "server", "--data", str(blocker / "data"), "--port",
                           str(free_port())], env=process_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "cannot use data dir" in done.stderr and "Traceback" not in done.stderr
