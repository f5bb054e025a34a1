"""Health probes: HTTP endpoints of the application, with retries; the results every probe returns.

Each engine probes its own database connections into the same :class:`ProbeResult`
(PostgreSQL: ``drkit.engines.postgres.probe``).

Every probe returns a :class:`ProbeResult` instead of raising, so a runbook can
show *what* failed and *how* ("connect refused", "HTTP 503", "timeout after 2s",
"read-only (in recovery)") next to when it happened. Targets and details never
contain secrets: a DSN is shown as ``host:port/dbname`` and a URL without its
user info or query string.

Retry semantics (:func:`probe_with_retries`): one attempt plus ``retries``
retries, ``interval`` seconds apart, stopping at the first success. The series
is ``healthy`` when any attempt succeeded; a failover decision must require
``failed_all`` (every attempt failed), so one lucky answer from a flapping
primary is enough to hold off a promotion, and one failed packet is never
enough to start one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import httpx

ProbeKind = Literal["http", "db"]

__all__ = [
    "ProbeFailed",
    "ProbeKind",
    "ProbeResult",
    "ProbeSeries",
    "error_rate_and_latency",
    "probe_http",
    "probe_with_retries",
    "url_target",
]


class ProbeFailed(Exception):
    """Raised by :meth:`ProbeSeries.raise_if_failed` when every attempt failed (probes themselves never raise)."""

    def __init__(self, series: ProbeSeries) -> None:
        super().__init__(series.summary())
        self.series = series


def _now() -> datetime:
    return datetime.now(UTC)


def secs(value: float) -> str:
    """A duration as probe details print it."""
    return f"{value:g}s"


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one target.

    ``detail`` says what happened: on success "HTTP 200" or "writable" / "read-only (in recovery)",
    on failure what failed and how. ``status_code`` (HTTP) and ``writable`` (db) are set when known.
    """

    target: str
    ok: bool
    kind: ProbeKind
    latency_ms: float
    detail: str
    at: datetime
    status_code: int | None = None
    writable: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "ok": self.ok, "kind": self.kind, "latency_ms": round(self.latency_ms, 1),
            "detail": self.detail, "at": self.at.isoformat(), "status_code": self.status_code,
            "writable": self.writable,
        }


@dataclass(frozen=True)
class ProbeSeries:
    """The attempts of one probe with retries, oldest first."""

    attempts: tuple[ProbeResult, ...] = field(default_factory=tuple)

    @property
    def healthy(self) -> bool:
        """Any attempt succeeded."""
        return any(r.ok for r in self.attempts)

    @property
    def failed_all(self) -> bool:
        """There was at least one attempt and every one failed: the only state that may justify a failover."""
        return bool(self.attempts) and not self.healthy

    @property
    def target(self) -> str:
        return self.attempts[0].target if self.attempts else ""

    @property
    def first_failure_at(self) -> datetime | None:
        return next((r.at for r in self.attempts if not r.ok), None)

    @property
    def last(self) -> ProbeResult | None:
        return self.attempts[-1] if self.attempts else None

    def summary(self) -> str:
        n, bad = len(self.attempts), [r for r in self.attempts if not r.ok]
        if not n:
            return "no probe attempts"
        if not bad:
            return f"{self.target}: healthy ({self.attempts[-1].detail})"
        details: dict[str, int] = {}
        for r in bad:
            details[r.detail] = details.get(r.detail, 0) + 1
        how = ", ".join(d if c == 1 else f"{d} ×{c}" for d, c in details.items())
        first = self.first_failure_at
        since = first.strftime("%Y-%m-%d %H:%M:%SZ") if first else "?"
        verdict = "healthy" if self.healthy else "DOWN"
        return f"{self.target}: {verdict}, {len(bad)} of {n} attempts failed since {since} ({how})"

    def raise_if_failed(self) -> None:
        if self.failed_all:
            raise ProbeFailed(self)

    def as_dict(self) -> dict[str, Any]:
        first = self.first_failure_at
        return {
            "target": self.target, "healthy": self.healthy, "failed_all": self.failed_all,
            "first_failure_at": first.isoformat() if first else None, "summary": self.summary(),
            "attempts": [r.as_dict() for r in self.attempts],
        }


# -- HTTP ------------------------------------------------------------------------------------------


def url_target(url: str) -> str:
    """scheme://host[:port]/path of ``url``: no user info, no query string (tokens live there)."""
    import httpx  # only when probing over HTTP (0.1 s to import; `drkit status` does not need it)

    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "(invalid URL)"
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{u.host}{port}{u.path}"


def _connect_error_detail(exc: Exception) -> str:
    text = str(exc)
    low = text.lower()
    if "refused" in low:
        return "connect refused"
    if "name or service not known" in low or "nodename nor servname" in low or "name resolution" in low:
        return "DNS lookup failed"
    if "unreachable" in low:
        return "network unreachable"
    if "reset" in low:
        return "connection reset"
    return f"connect failed: {text.strip().splitlines()[0] if text.strip() else type(exc).__name__}"


def probe_http(
    url: str,
    *,
    timeout: float = 2.0,
    expect_status: Iterable[int] = range(200, 400),
    client: httpx.Client | None = None,
) -> ProbeResult:
    """GET ``url`` once; ok when the status is in ``expect_status`` (redirects are not followed).

    ``timeout`` bounds each phase (connect, each read) as httpx does; a slow endpoint fails with
    "timeout after Ns". A given ``client`` is reused (connection pooling) with this call's timeout.
    """
    import httpx

    target = url_target(url)
    expected = expect_status if isinstance(expect_status, range) else frozenset(expect_status)
    at = _now()
    t0 = time.perf_counter()

    def result(ok: bool, detail: str, status: int | None = None) -> ProbeResult:
        return ProbeResult(target=target, ok=ok, kind="http", latency_ms=(time.perf_counter() - t0) * 1000,
                           detail=detail, at=at, status_code=status)

    try:
        if client is None:
            with httpx.Client(timeout=timeout, follow_redirects=False) as own:
                resp = own.get(url)
        else:
            resp = client.get(url, timeout=timeout)
    except httpx.ConnectTimeout:
        return result(False, f"timeout after {secs(timeout)} (connect)")
    except httpx.TimeoutException:
        return result(False, f"timeout after {secs(timeout)} (response)")
    except httpx.ConnectError as exc:
        return result(False, _connect_error_detail(exc))
    except httpx.RemoteProtocolError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "bad response"
        return result(False, f"protocol error: {first}")
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        return result(False, f"{type(exc).__name__}: {str(exc).strip()[:200]}")
    ok = resp.status_code in expected
    return result(ok, f"HTTP {resp.status_code}", resp.status_code)


# -- retries and windows ---------------------------------------------------------------------------


def probe_with_retries(
    probe: Callable[[], ProbeResult],
    *,
    retries: int = 3,
    interval: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ProbeSeries:
    """Run ``probe`` once, then up to ``retries`` more times ``interval`` seconds apart, until one succeeds.

    At most ``1 + retries`` attempts; no sleep after the last one. See the module docstring for why a
    failover requires :attr:`ProbeSeries.failed_all`.
    """
    if retries < 0:
        raise ValueError("retries must be >= 0")
    attempts: list[ProbeResult] = []
    for i in range(retries + 1):
        if i:
            sleep(interval)
        res = probe()
        attempts.append(res)
        if res.ok:
            break
    return ProbeSeries(tuple(attempts))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def error_rate_and_latency(results: Iterable[ProbeResult]) -> tuple[float, float]:
    """(share of failed probes 0..1, nearest-rank p95 latency in ms) over a hold window.

    Latency counts every attempt, failures included: a probe that timed out took at least its timeout,
    and leaving it out would make a slow backend look fast. An empty window is an error (no evidence is
    not a pass).
    """
    items = list(results)
    if not items:
        raise ValueError("no probe results in the window: cannot judge error rate or latency")
    errors = sum(1 for r in items if not r.ok)
    return errors / len(items), percentile([r.latency_ms for r in items], 95)
