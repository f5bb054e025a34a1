"""The HTTP listener ``drkit serve`` runs beside the deployments, and what only Prefect can tell it.

``drkit.metrics`` reads the catalog and the replicas; the runs paused for an approval are Prefect's to
know, so :func:`paused_since` asks the Prefect API and :func:`start_listener` hands it to the collector. The
listener also serves the Alertmanager receiver (``deployments.alert_events.alert_routes``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime

from drkit.config import Policy
from drkit.http_service import HttpService
from drkit.metrics import DrkitCollector, metrics_registry
from drkit.runtime import Runtime


def paused_since() -> list[datetime]:
    """When each flow run waiting for a human now was paused (Prefect's PAUSED state type: Paused and
    Suspended runs)."""
    from flows.approvals import paused_runs

    return [r["since"] for r in paused_runs() if r["since"] is not None]


@dataclass
class Listener:
    service: HttpService
    collector: DrkitCollector

    def stop(self) -> None:
        self.service.stop()
        self.collector.close()


def start_listener(policy: Policy) -> Listener | None:
    """The policy's ``metrics.listen`` endpoint, started (None when ``listen`` is null)."""
    if policy.metrics.listen is None:
        return None
    from deployments.alert_events import alert_routes

    routes = alert_routes(policy)
    registry, collector = metrics_registry(Runtime(policy), approvals=paused_since)
    try:
        service = HttpService(policy.metrics.listen, registry, routes).start()
    except BaseException:
        collector.close()
        raise
    posts = "".join(f", POST {service.url}{path}" for path in routes)
    print(f"drkit: GET {service.url}/metrics{posts}", file=sys.stderr, flush=True)
    return Listener(service, collector)
