"""Alertmanager's webhook, read: which Prefect events a notification turns into (no Prefect here).

Alertmanager posts a JSON document (payload ``version: "4"``) with the alerts of one group; each alert
becomes one event, ``drkit.alert.firing`` or ``drkit.alert.resolved``, about the database the alert names
(resource ``drkit.database.<db>``, labelled with the alert's name and severity). Deployments carry triggers
on these events (``deployments.serve``): a firing ``DrkitLogBackupTooOld`` starts that database's log backup.

The receiver requires ``Authorization: Bearer <token>``; the token is read from the environment variable the
policy names (``metrics.alert_token_env``). It is compared in constant time and never appears in an answer
or a log.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drkit.errors import first_line
from drkit.http_service import MAX_BODY

DEFAULT_TOKEN_ENV = "DRKIT_ALERT_TOKEN"  # noqa: S105 - the name of a variable, not a token
FIRING_EVENT = "drkit.alert.firing"
RESOLVED_EVENT = "drkit.alert.resolved"
RESOURCE_PREFIX = "drkit.database."
INSTALLATION_RESOURCE = "drkit"
"""The resource of an alert that names no database (the exporter, the catalog check, approvals)."""


def database_resource(db: str) -> str:
    """The Prefect resource id the events about database ``db`` carry (and its deployments' triggers match)."""
    return RESOURCE_PREFIX + db


class _Strict(BaseModel):
    # Fields Alertmanager may add in a later version are ignored; the ones read here must have their types.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class WebhookAlert(_Strict):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime = Field(strict=False)  # noqa: N815 - Alertmanager's name
    fingerprint: str = ""


class WebhookPayload(_Strict):
    """Alertmanager's webhook notification (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config)."""

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    alerts: list[WebhookAlert]


@dataclass(frozen=True)
class AlertEvent:
    """One Prefect event to emit for one alert."""

    event: str
    resource: dict[str, str]
    payload: dict[str, Any]


@dataclass(frozen=True)
class Receipt:
    """The receiver's answer: HTTP status, a one-line message (no token in it) and the events to emit."""

    status: int
    message: str
    events: tuple[AlertEvent, ...] = field(default=())


def _authorized(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").strip().partition(" ")
    # compare bytes of both in constant time, whatever the scheme (no early answer to time)
    ok = hmac.compare_digest(given.strip().encode(), token.encode())
    return ok and scheme.lower() == "bearer"


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    return f"{where}: {first['msg']}"


def parse(body: bytes) -> WebhookPayload:
    """The payload, or ValueError with one line saying what is wrong with it."""
    if len(body) > MAX_BODY:
        raise ValueError(f"payload larger than {MAX_BODY} bytes")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON ({e.__class__.__name__}: {first_line(e)})") from None
    except RecursionError:  # arrays or objects nested deeper than the parser's stack: no payload looks so
        raise ValueError("not an Alertmanager webhook payload: JSON nested too deeply") from None
    try:
        return WebhookPayload.model_validate(doc)
    except ValidationError as e:
        raise ValueError(f"not an Alertmanager webhook payload (version 4): {_one_line(e)}") from None


def to_event(alert: WebhookAlert, db: str | None) -> AlertEvent:
    resource = {"prefect.resource.id": database_resource(db) if db else INSTALLATION_RESOURCE,
                "drkit.alertname": alert.labels.get("alertname", "")}
    if "severity" in alert.labels:
        resource["drkit.severity"] = alert.labels["severity"]
    return AlertEvent(
        event=FIRING_EVENT if alert.status == "firing" else RESOLVED_EVENT,
        resource=resource,
        payload={"labels": dict(alert.labels), "annotations": dict(alert.annotations),
                 "startsAt": alert.startsAt.isoformat(), "fingerprint": alert.fingerprint})


def receive(body: bytes, authorization: str | None, *, databases: Collection[str], token_env: str = DEFAULT_TOKEN_ENV,
            environ: Mapping[str, str] = os.environ) -> Receipt:
    """Judge one webhook call: 503 when no token is configured, 401 for a wrong one, 400 for a body that is
    not a version-4 payload; else 200 with one event per alert. An alert for a database the policy does not
    define is ignored (counted in the message), not an error: Alertmanager would retry an error forever."""
    token = environ.get(token_env, "")
    if not token:
        return Receipt(503, f"set {token_env} in drkit serve's environment to the token Alertmanager sends "
                            "(webhook_config http_config.authorization.credentials_file)")
    if not _authorized(authorization, token):
        return Receipt(401, "missing or wrong bearer token")
    try:
        payload = parse(body)
    except ValueError as e:
        return Receipt(400, str(e))
    events: list[AlertEvent] = []
    unknown: set[str] = set()
    for alert in payload.alerts:
        db = alert.labels.get("database")
        if db is not None and db not in databases:
            unknown.add(db)
            continue
        events.append(to_event(alert, db))
    ignored = len(payload.alerts) - len(events)
    message = f"{len(events)} event(s) emitted"
    if ignored:
        names = ", ".join(repr(u) for u in sorted(unknown))
        message += f"; {ignored} alert(s) ignored for databases not in the policy: {names}"
    return Receipt(200, message, tuple(events))
