"""Wires a policy file to the parts it names: catalog, encryption key and stores (engines open on top of it:
``drkit.engines.open_engine``).

Everything is opened lazily, so a command that fails on bad input (unknown
database, missing key) fails before it touches the catalog or a store.
Imports are lazy too (read-only commands must start fast): the catalog reads a current SQLite file without
SQLAlchemy (:func:`drkit.catalog.reader.open_catalog`), and the key, stores and engine helpers are imported
when first used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from drkit.config import Policy, default_bin_dir
from drkit.errors import ConfigError
from drkit.host import effective_os_user

if TYPE_CHECKING:
    from drkit.catalog import Catalog
    from drkit.pipeline import EncryptionKey
    from drkit.storage import Store


class Runtime:
    def __init__(self, policy: Policy, environ: Mapping[str, str] | None = None) -> None:
        self.policy = policy
        self.environ = os.environ if environ is None else environ
        self._stores: dict[str, Store] = {}

    @cached_property
    def catalog(self) -> Catalog:
        from drkit.catalog.reader import open_catalog

        return open_catalog(self.policy.catalog_url())

    @cached_property
    def key(self) -> EncryptionKey:
        from drkit.pipeline import EncryptionKey

        return EncryptionKey.from_env(self.policy.encryption.key_env, self.environ)

    @property
    def tier_order(self) -> list[str]:
        """Tiers cheapest to read first: the policy's order (local, blob, archive)."""
        return list(self.policy.tiers)

    def store(self, tier: str) -> Store:
        if tier not in self.policy.tiers:
            raise ConfigError(f"unknown tier {tier!r}: the policy file defines {sorted(self.policy.tiers)}")
        if tier not in self._stores:
            cfg = self.policy.tiers[tier]
            if cfg.store == "azure":
                from drkit.storage.azure import ClientOptions, open_azure_store  # the SDK only when needed

                options = ClientOptions(retry_total=cfg.request_retries)
                self._stores[tier] = open_azure_store(tier, cfg, self.environ, options=options)
            else:
                from drkit.storage import FilesystemStore

                self._stores[tier] = FilesystemStore(self.policy.tier_path(tier), name=tier)
        return self._stores[tier]

    def os_user(self, db: str) -> str | None:
        return effective_os_user(self.policy.database(db).os_user)

    def bin_dir(self, db: str) -> Path:
        cfg = self.policy.database(db)
        return self.policy.resolve(cfg.bin_dir) if cfg.bin_dir else default_bin_dir()

    def close(self) -> None:
        if "catalog" in self.__dict__:
            self.catalog.close()
