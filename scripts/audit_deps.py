"""`make lint`: pip-audit of requirements.lock against PyPI's vulnerability data.

Every pin of the lock is exact, so pip-audit resolves nothing (--no-deps --disable-pip) and asks PyPI's
JSON API (https://pypi.org/pypi/NAME/VERSION/json) about each release. Exits 1 on any known
vulnerability. A package the service could not answer for (no network, or a PyPI mirror or proxy that
serves the simple index but not that JSON API) is not audited: the script says how many on one line, and
fails for it only with AUDIT_STRICT=1 (set it where PyPI itself is reachable, e.g. CI with network).
Usage: python scripts/audit_deps.py [requirements.lock]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    lock = sys.argv[1] if len(sys.argv) > 1 else "requirements.lock"
    pip_audit = Path(sys.executable).with_name("pip-audit")
    strict = os.environ.get("AUDIT_STRICT", "") not in ("", "0")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "audit.json"
        proc = subprocess.run(
            [str(pip_audit), "-r", lock, "--no-deps", "--disable-pip", "--progress-spinner", "off",
             "-f", "json", "-o", str(report)], capture_output=True, text=True, check=False)
        data = json.loads(report.read_text()) if report.is_file() and report.stat().st_size else None
    if data is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"pip-audit: could not run ({last}); dependencies NOT audited", file=sys.stderr)
        return 1 if strict else 0
    deps = data.get("dependencies", [])
    vulnerable = [d for d in deps if d.get("vulns")]
    skipped = [d for d in deps if d.get("skip_reason")]
    for d in vulnerable:
        for v in d["vulns"]:
            fix = ", ".join(v.get("fix_versions") or []) or "no fixed release"
            print(f"pip-audit: {d['name']}=={d['version']}: {v['id']} (fixed in {fix})", file=sys.stderr)
    audited = len(deps) - len(skipped)
    if skipped:
        print(f"pip-audit: the vulnerability service did not answer for {len(skipped)} of {len(deps)} pinned "
              f"packages (e.g. {skipped[0]['skip_reason']}); those are NOT audited"
              + ("" if strict else " (AUDIT_STRICT=1 makes this fail)"), file=sys.stderr)
    if vulnerable:
        return 1
    if audited:
        print(f"pip-audit: {audited} of {len(deps)} pinned packages audited, no known vulnerabilities")
    return 1 if strict and skipped else 0


if __name__ == "__main__":
    sys.exit(main())
