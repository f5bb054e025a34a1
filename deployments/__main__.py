"""``python -m deployments [POLICY]``: serve every deployment (scheduled ones on their schedule, runbooks on demand)."""

import sys

from deployments.serve import serve_all
from drkit.config import find_config

if __name__ == "__main__":
    serve_all(str(find_config(sys.argv[1] if len(sys.argv) > 1 else None).resolve()))
