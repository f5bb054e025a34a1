"""The Alertmanager receiver ``drkit serve`` mounts: each alert becomes a Prefect event.

``alert_routes(policy)`` gives the HTTP listener its POST routes (path -> handler(body, Authorization header)
-> (status, one-line answer)). The handler judges the call with :mod:`drkit.alerts` (token, payload, known
databases) and emits one event per alert; the deployments' triggers (``deployments.serve``) turn a firing
``DrkitLogBackupTooOld`` / ``DrkitFullBackupTooOld`` into a run of ``<db>-log`` / ``<db>-full``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drkit.alerts import FIRING_EVENT, database_resource, receive
from drkit.config import Policy
from drkit.errors import safe_summary

if TYPE_CHECKING:
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

ALERTMANAGER_PATH = "/alertmanager"

Handler = Callable[[bytes, "str | None"], "tuple[int, str]"]

log = logging.getLogger("drkit.alerts")

BACKUP_ALERTS = {"log": ("DrkitLogBackupTooOld", 30 * 60), "full": ("DrkitFullBackupTooOld", 6 * 3600)}
"""Backup kind -> (the alert that starts a backup of that kind at once, the trigger's cooldown in seconds).

Alertmanager re-sends a firing alert every ``repeat_interval`` (and on group changes); the trigger is reactive
with ``threshold: 1, within: cooldown``, so Prefect runs the deployment on the first notification and ignores
the repeats for the rest of the window: at most one alert-started log backup per 30 minutes per database (the
alert's own threshold) and one full per 6 hours. A backup that is still running when a second one starts
waits for the database's backup lock; it never runs twice at once."""


@dataclass(frozen=True)
class AlertTrigger:
    """Run the deployment carrying this when Alertmanager reports ``alertname`` firing for database ``db``
    (once per ``cooldown_seconds``). The same document is written to ``prefect.yaml`` and served."""

    db: str
    alertname: str
    cooldown_seconds: int

    def document(self) -> dict[str, Any]:
        """The ``triggers:`` entry of ``prefect.yaml`` (Prefect's deployment-trigger schema)."""
        return {
            "type": "event",
            "name": f"{self.db}: {self.alertname}",
            "description": f"{self.alertname} firing for {self.db} (Alertmanager): run now, at most once per "
                           f"{self.cooldown_seconds // 60} min",
            "enabled": True,
            "match": {"prefect.resource.id": database_resource(self.db), "drkit.alertname": self.alertname},
            "expect": [FIRING_EVENT],
            "posture": "Reactive",
            "threshold": 1,
            "within": self.cooldown_seconds,
        }

    def to_prefect(self) -> DeploymentEventTrigger:
        from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

        return DeploymentEventTrigger.model_validate(self.document())


def backup_triggers(db: str, kind: str) -> tuple[AlertTrigger, ...]:
    """The alert triggers of ``db``'s ``kind`` backup deployment (none for a differential)."""
    if kind not in BACKUP_ALERTS:
        return ()
    alertname, cooldown = BACKUP_ALERTS[kind]
    return (AlertTrigger(db, alertname, cooldown),)


def alert_routes(policy: Policy) -> dict[str, Handler]:
    """``{"/alertmanager": handler}`` for the HTTP listener of ``drkit serve``."""
    databases = frozenset(policy.databases)
    token_env = policy.metrics.alert_token_env

    def alertmanager(body: bytes, authorization: str | None) -> tuple[int, str]:
        from prefect.events import emit_event

        receipt = receive(body, authorization, databases=databases, token_env=token_env)
        if receipt.status != 200:
            log.warning("alertmanager webhook refused (%s): %s", receipt.status, receipt.message)
            return receipt.status, receipt.message
        for ev in receipt.events:
            try:
                sent = emit_event(event=ev.event, resource=ev.resource, payload=ev.payload)
            except Exception as e:  # noqa: BLE001 - answered as a 503 so Alertmanager retries
                # not the message: a client library's error may carry the API URL with its credentials
                log.warning("alertmanager webhook: could not emit %s: %s", ev.event, safe_summary(e))
                return 503, f"could not emit {ev.event}: {e.__class__.__name__}; see drkit serve's log"
            if sent is None:
                return 503, "Prefect events are off in this process: drkit serve needs PREFECT_API_URL"
            log.info("%s %s for %s", ev.event, ev.resource["drkit.alertname"], ev.resource["prefect.resource.id"])
        return receipt.status, receipt.message

    return {ALERTMANAGER_PATH: alertmanager}
