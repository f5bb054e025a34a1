"""Each fault-injection scenario run N times, in one table: fault | runs | outcome | catalog check | restore exact.

Run from the project root, as root (tmpfs mounts; the sandbox servers run as the postgres OS user)::

    .venv/bin/python -m bench.faults [--runs N] [--only kill,network,...] [--verbose]

The scenarios are the ones ``tests/faults`` asserts (tests/support/fault_scenarios.py, documented in
docs/faults.md): the same code, here repeated to show that an outcome is not luck. A family's world (a
sandbox PostgreSQL, its tiers, Azurite when needed) is built once and reused by its runs, except where a
fault uses the world up (a failover promotes the replica; a tmpfs is grown); one real Prefect server
serves them all (and is restarted by the Prefect faults).

Columns: **outcome** is what the faulted operation did (each distinct one with its count);
**catalog check** what `drkit catalog check` found and whether `--repair` made it clean;
**restore exact** how many runs restored the newest chain with exactly the marker rows written.
A run with any violated expectation is listed under the table with why. Exit status 1 if any run had one.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import Counter
from contextlib import ExitStack

from tests.support.fault_scenarios import FAMILIES, Family, Outcome, World
from tests.support.prefect_process import PrefectProcess


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _counted(values: list[str]) -> str:
    counts = Counter(values)
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{v} ×{n}" for v, n in counts.most_common())


def run_family(family: Family, prefect: PrefectProcess, runs: int, verbose: bool) -> dict[str, list[Outcome]]:
    results: dict[str, list[Outcome]] = {s.name: [] for s in family.scenarios}
    with ExitStack() as stack:
        world: World | None = None
        for i in range(runs):
            if world is None or family.fresh_world_per_run:
                stack.close()
                log(f"{family.name}: building its world")
                world = stack.enter_context(family.world(prefect))
            for scenario in family.scenarios:
                t0 = time.monotonic()
                try:
                    out = scenario.run(world)
                except Exception as exc:  # a scenario that could not even run is a failed run, not a crash
                    out = Outcome(scenario.name, outcome=f"ERROR: {type(exc).__name__}")
                    out.problem(f"{type(exc).__name__}: {exc}")
                    out.seconds = round(time.monotonic() - t0, 1)
                results[scenario.name].append(out)
                log(f"{family.name} {i + 1}/{runs} {out.fault}: {out.outcome} | {out.check} | "
                    f"restore exact {out.restore_exact} | {out.seconds} s {'' if out.ok else '| PROBLEMS'}")
                if verbose:
                    log(f"   steps: {out.steps}; notes: {out.notes}; problems: {out.problems}")
    return results


def table(results: dict[str, list[Outcome]]) -> str:
    lines = ["| fault | runs | outcome | catalog check | restore exact | s (median) |",
             "|---|---|---|---|---|---|"]
    for outs in results.values():
        fault = outs[0].fault
        exact = sum(1 for o in outs if o.restore_exact)
        seconds = sorted(o.seconds for o in outs)[len(outs) // 2]
        lines.append(f"| {fault} | {len(outs)} | {_counted([o.outcome for o in outs])} | "
                     f"{_counted([o.check for o in outs])} | {exact}/{len(outs)} | {seconds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="runs of each scenario (default 1)")
    parser.add_argument("--only", default="", help="comma-separated families: "
                        + ", ".join(f.name for f in FAMILIES))
    parser.add_argument("--verbose", action="store_true", help="each run's step timings and notes")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: the disk-full faults mount a tmpfs, the servers run as the postgres user")
    wanted = {w for w in args.only.split(",") if w}
    unknown = wanted - {f.name for f in FAMILIES}
    if unknown:
        parser.error(f"unknown famil{'y' if len(unknown) == 1 else 'ies'}: {', '.join(sorted(unknown))}")
    families = [f for f in FAMILIES if not wanted or f.name in wanted]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers and unmount on `kill`
    t0 = time.monotonic()
    prefect = PrefectProcess()
    log("starting a Prefect server")
    prefect.start()
    results: dict[str, list[Outcome]] = {}
    try:
        for family in families:
            results.update(run_family(family, prefect, args.runs, args.verbose))
    finally:
        prefect.close()
    print(table(results))
    bad = [o for outs in results.values() for o in outs if not o.ok]
    for o in bad:
        print(f"\n{o.report()}")
    print(f"\n{sum(len(v) for v in results.values())} runs in {time.monotonic() - t0:.0f} s; "
          f"{len(bad)} with a violated expectation; load average {os.getloadavg()[0]:.1f}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
