"""Notifications: drkit events routed to the Prefect notification blocks the policy names.

``notifications: {backup_failed: [custom-webhook/dba-hook, slack-webhook/ops]}``: each entry is
a saved block, as ``type-slug/name`` or a bare name when only one block has it. A delivery
that fails is logged and never hides the failure being reported.
"""

from __future__ import annotations

from typing import Any

from prefect import get_client, get_run_logger, task
from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from drkit.config import load_policy

EVENTS = ("backup_failed", "verify_failed", "p1", "drill_missed", "drill_failed")


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:
        import logging
        return logging.getLogger("drkit.notify")


def _load(name: str) -> NotificationBlock:
    if "/" not in name:
        with get_client(sync_client=True) as client:
            docs = [d for d in client.read_block_documents(include_secrets=False) if d.name == name]
        if len(docs) != 1:
            raise LookupError(f"{'no' if not docs else 'more than one'} saved block named {name!r}; "
                              "name it as type-slug/name in the policy's notifications")
        assert docs[0].block_type is not None
        name = f"{docs[0].block_type.slug}/{name}"
    block = Block.load(name)
    if not isinstance(block, NotificationBlock):
        raise LookupError(f"block {name!r} is not a notification block")
    return block


def deliver(event: str, subject: str, body: str, config: str | None) -> list[str]:
    """Send to every block routed for ``event``; returns the ones that accepted it."""
    log = _logger()
    names = load_policy(config).notifications.get(event, [])
    if not names:
        log.warning("no notification blocks configured for %s: %s", event, subject)
    delivered = []
    for name in names:
        try:
            block = _load(name)
            with block.raise_on_failure():
                block.notify(body=body, subject=subject)  # type: ignore[unused-coroutine]  # sync here
            delivered.append(name)
        except Exception as exc:  # a failed delivery must never hide what is being reported
            log.error("notification %s via %s failed: %s: %s", event, name, type(exc).__name__, exc)
    return delivered


@task(name="notify", cache_policy=NO_CACHE)
def notify(event: str, subject: str, body: str, config: str | None) -> list[str]:
    return deliver(event, subject, body, config)
