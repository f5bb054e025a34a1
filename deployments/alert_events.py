"""The Alertmanager receiver ``drkit serve`` mounts: each alert becomes a Prefect event.

``alert_routes(policy)`` gives the HTTP listener its POST routes (path -> handler(body, Authorization header)
-> (status, one-line answer)). The handler judges the call with :mod:`drkit.alerts` (token, payload, known
databases) and emits one event per alert; the deployments' triggers (``deployments.serve``) turn a firing
``DrkitLogBackupTooOld`` / ``DrkitFullBackupTooOld`` into a run of ``<db>-log`` / ``<db>-full``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from drkit.alerts import receive, token_env_name
from drkit.config import Policy

ALERTMANAGER_PATH = "/alertmanager"

Handler = Callable[[bytes, "str | None"], "tuple[int, str]"]

log = logging.getLogger("drkit.alerts")


def alert_routes(policy: Policy) -> dict[str, Handler]:
    """``{"/alertmanager": handler}`` for the HTTP listener of ``drkit serve``."""
    databases = frozenset(policy.databases)
    token_env = token_env_name(policy)

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
                first = str(e).splitlines()[0] if str(e) else ""
                return 503, f"could not emit {ev.event}: {e.__class__.__name__}: {first}"
            if sent is None:
                return 503, "Prefect events are off in this process: drkit serve needs PREFECT_API_URL"
            log.info("%s %s for %s", ev.event, ev.resource["drkit.alertname"], ev.resource["prefect.resource.id"])
        return receipt.status, receipt.message

    return {ALERTMANAGER_PATH: alertmanager}
