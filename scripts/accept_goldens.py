"""Accept the SQL Server golden transcripts the last golden test run left in tests/golden/sqlserver/.sent/.

`make golden` runs the golden tests (they only read the goldens and fail on a difference, leaving what was
sent in .sent/), then this script moves each sent transcript over its golden. Review `git diff` before
committing: a golden is the contract of the exact T-SQL drkit sends.
"""

from __future__ import annotations

import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "sqlserver"


def main() -> int:
    sent = GOLDEN / ".sent"
    files = sorted(sent.glob("*.sql")) if sent.is_dir() else []
    for f in files:
        f.replace(GOLDEN / f.name)
        print(f"accepted {GOLDEN.name}/{f.name}")
    if not files:
        print("nothing to accept: every golden matches what the tests sent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
