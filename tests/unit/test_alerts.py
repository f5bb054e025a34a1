"""The Alertmanager receiver judges each call: the token, the payload, the databases it knows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from drkit.alerts import DEFAULT_TOKEN_ENV, receive
from drkit.config import Policy

TOKEN = "tok-3f9a1c7e-not-for-logs"  # noqa: S105 - a test token
DBS = {"orders", "crm"}
ENV = {DEFAULT_TOKEN_ENV: TOKEN}


def alert(name: str, status: str = "firing", **labels: str) -> dict[str, Any]:
    return {"status": status, "labels": {"alertname": name, **labels},
            "annotations": {"summary": f"{name} on {labels.get('database', '-')}"},
            "startsAt": "2026-12-07T14:30:00.123Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph", "fingerprint": "5a1c9e0f2b3d4e6f"}


def payload(*alerts: dict[str, Any], status: str = "firing") -> bytes:
    """A notification as Alertmanager sends it (webhook_config, version 4)."""
    return json.dumps({
        "receiver": "drkit", "status": status, "alerts": list(alerts),
        "groupLabels": {"alertname": "DrkitLogBackupTooOld"}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "version": "4", "groupKey": "{}:{alertname=\"x\"}",
        "truncatedAlerts": 0}).encode()


def test_a_firing_alert_becomes_an_event_about_its_database() -> None:
    body = payload(alert("DrkitLogBackupTooOld", database="orders", severity="P2"))
    r = receive(body, f"Bearer {TOKEN}", databases=DBS, environ=ENV)
    assert (r.status, r.message) == (200, "1 event(s) emitted")
    [ev] = r.events
    assert ev.event == "drkit.alert.firing"
    assert ev.resource == {"prefect.resource.id": "drkit.database.orders", "drkit.alertname": "DrkitLogBackupTooOld",
                           "drkit.severity": "P2"}
    assert ev.payload == {
        "labels": {"alertname": "DrkitLogBackupTooOld", "database": "orders", "severity": "P2"},
        "annotations": {"summary": "DrkitLogBackupTooOld on orders"},
        "startsAt": "2026-12-07T14:30:00.123000+00:00", "fingerprint": "5a1c9e0f2b3d4e6f"}


def test_resolved_alerts_and_alerts_without_a_database() -> None:
    body = payload(alert("DrkitFullBackupTooOld", "resolved", database="crm", severity="P2"),
                   alert("DrkitExporterDown", severity="P1"), status="resolved")
    r = receive(body, f"Bearer {TOKEN}", databases=DBS, environ=ENV)
    assert r.status == 200
    assert [(e.event, e.resource["prefect.resource.id"], e.resource["drkit.alertname"]) for e in r.events] == [
        ("drkit.alert.resolved", "drkit.database.crm", "DrkitFullBackupTooOld"),
        ("drkit.alert.firing", "drkit", "DrkitExporterDown")]


def test_an_unknown_database_is_ignored_and_counted_not_an_error() -> None:
    body = payload(alert("DrkitLogBackupTooOld", database="orders"), alert("DrkitLogBackupTooOld", database="legacy"),
                   alert("DrkitRpoAboveTarget", database="legacy"))
    r = receive(body, f"Bearer {TOKEN}", databases=DBS, environ=ENV)
    assert r.status == 200
    assert r.message == "1 event(s) emitted; 2 alert(s) ignored for databases not in the policy: 'legacy'"
    assert [e.resource["prefect.resource.id"] for e in r.events] == ["drkit.database.orders"]


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x",
                                    f"Bearer {TOKEN[:-1]}"])
def test_a_missing_or_wrong_token_is_refused(header: str | None) -> None:
    r = receive(payload(alert("DrkitLogBackupTooOld", database="orders")), header, databases=DBS, environ=ENV)
    assert (r.status, r.message, r.events) == (401, "missing or wrong bearer token", ())


def test_no_token_configured_answers_503_and_names_the_variable() -> None:
    r = receive(payload(alert("DrkitLogBackupTooOld", database="orders")), f"Bearer {TOKEN}", databases=DBS,
                token_env="DRKIT_AM_TOKEN", environ={DEFAULT_TOKEN_ENV: TOKEN, "DRKIT_AM_TOKEN": ""})
    assert r.status == 503 and r.events == ()
    assert r.message.startswith("set DRKIT_AM_TOKEN in drkit serve's environment")
    # the variable the policy names is the one read
    r = receive(payload(alert("DrkitLogBackupTooOld", database="orders")), f"Bearer {TOKEN}", databases=DBS,
                token_env="DRKIT_AM_TOKEN", environ={"DRKIT_AM_TOKEN": TOKEN})
    assert r.status == 200


@pytest.mark.parametrize(("body", "says"), [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[]", "not an Alertmanager webhook payload (version 4): payload:"),
    (json.dumps({"version": "3", "status": "firing", "alerts": []}).encode(), "version:"),
    (json.dumps({"version": "4", "status": "firing"}).encode(), "alerts: Field required"),
    (json.dumps({"version": "4", "status": "firing", "alerts": [{"status": "firing", "labels": {"a": 1},
                                                                  "startsAt": "2026-12-07T14:30:00Z"}]}).encode(),
     "alerts.0.labels.a:"),
    (json.dumps({"version": "4", "status": "firing", "alerts": [{"status": "pending", "labels": {},
                                                                  "startsAt": "2026-12-07T14:30:00Z"}]}).encode(),
     "alerts.0.status:"),
    (json.dumps({"version": "4", "status": "firing", "alerts": [{"status": "firing", "labels": {},
                                                                  "startsAt": "yesterday"}]}).encode(),
     "alerts.0.startsAt:"),
])
def test_bad_input_is_a_400_with_one_line(body: bytes, says: str) -> None:
    r = receive(body, f"Bearer {TOKEN}", databases=DBS, environ=ENV)
    assert r.status == 400 and r.events == ()
    assert says in r.message and "\n" not in r.message


def test_the_token_is_in_no_answer() -> None:
    bodies = [payload(alert("DrkitLogBackupTooOld", database="orders")), b"{",
              json.dumps({"version": TOKEN, "status": TOKEN, "alerts": TOKEN}).encode()]
    answers = [receive(b, h, databases=DBS, environ=ENV) for b in bodies
               for h in (f"Bearer {TOKEN}", f"Bearer {TOKEN[:-2]}", None)]
    answers.append(receive(bodies[0], f"Bearer {TOKEN}", databases=DBS, environ={}))
    assert {a.status for a in answers} == {200, 400, 401, 503}
    assert not [a for a in answers if TOKEN[:-2] in a.message]


def test_the_receiver_reads_the_variable_the_policy_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.alert_events import alert_routes

    monkeypatch.setenv(DEFAULT_TOKEN_ENV, TOKEN)
    monkeypatch.delenv("AM_TOKEN", raising=False)
    [(path, handler)] = alert_routes(Policy.model_validate({"metrics": {"alert_token_env": "AM_TOKEN"}})).items()
    body = payload(alert("DrkitLogBackupTooOld", database="orders"))
    assert path == "/alertmanager"
    status, message = handler(body, f"Bearer {TOKEN}")
    assert status == 503 and message.startswith("set AM_TOKEN ")
    monkeypatch.setenv("AM_TOKEN", "another")
    assert handler(body, f"Bearer {TOKEN}") == (401, "missing or wrong bearer token")


def test_json_nested_too_deeply_is_a_400_not_a_crash() -> None:
    r = receive(b"[" * 200_000, f"Bearer {TOKEN}", databases=DBS, environ=ENV)
    assert (r.status, r.events) == (400, ())
    assert r.message == "not an Alertmanager webhook payload: JSON nested too deeply"
