"""Accept the SQL Server golden transcripts the last golden test run left in var/golden-sent/sqlserver/.

`make golden` runs the golden tests (they only read the goldens and fail on a difference, leaving what was
sent in var/golden-sent/sqlserver/), then this script moves each sent transcript over its golden. Review
`git diff` before committing: a golden is the contract of the exact T-SQL drkit sends.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "sqlserver"
SENT = ROOT / "var" / "golden-sent" / "sqlserver"


def main() -> int:
    files = sorted(SENT.glob("*.sql")) if SENT.is_dir() else []
    for f in files:
        f.replace(GOLDEN / f.name)
        print(f"accepted {GOLDEN.name}/{f.name}")
    if not files:
        print("nothing to accept: every golden matches what the tests sent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
