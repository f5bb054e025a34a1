"""``drkit metrics``: the Prometheus exposition, printed, written for node_exporter, or served (no Prefect)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import app, err, guard, runtime
from drkit.errors import ConfigError


@app.command()
def metrics(
    textfile: Annotated[Path | None, typer.Option("--textfile", help="write it here for node_exporter's textfile "
                                                  "collector (atomically; the name must end in .prom)")] = None,
    listen: Annotated[str | None, typer.Option("--listen", help="serve GET /metrics on HOST:PORT until "
                                               "Ctrl-C")] = None,
) -> None:
    """drkit's Prometheus metrics from the catalog and the DR replicas (README "Monitoring")."""
    def run() -> None:
        if textfile is not None and listen is not None:
            raise ConfigError("--textfile and --listen: choose one")
        if textfile is not None and not textfile.name.endswith(".prom"):
            raise ConfigError(f"--textfile {textfile}: node_exporter reads only files ending in .prom")
        from drkit.metrics import metrics_registry

        if listen is not None:
            from drkit.http_service import HttpService

            registry, collector = metrics_registry(runtime())
            service = HttpService(listen, registry)
            err.print(f"serving drkit metrics on {service.url}/metrics (Ctrl-C stops)")
            try:
                service.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                collector.close()
            return
        from prometheus_client import generate_latest

        registry, collector = metrics_registry(runtime())
        try:
            body = generate_latest(registry)
        finally:
            collector.close()
        if textfile is None:
            sys.stdout.buffer.write(body)
            sys.stdout.flush()
            return
        write_textfile(textfile, body)
    guard(run)


def write_textfile(path: Path, body: bytes) -> None:
    """Replace ``path`` atomically (a temporary name in its directory, then rename), following no link another
    user planted: the directory may be one node_exporter's users can write."""
    from drkit.safedir import SafeDir, trusted_path

    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ConfigError(f"--textfile {path}: no directory {directory}")
    with SafeDir.open(trusted_path(directory)) as d:
        d.replace(path.name, body, mode=0o644)
