"""Container HEALTHCHECK: exit 0 when /v2/health/ready answers 200, else 1.

Python's urllib rather than curl, so the runtime image needs no extra package.
"""

import os
import sys
import urllib.request

PORT = os.environ.get("NORMSERVE_PORT", "8000")

try:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/v2/health/ready", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:  # refused, 503 while warming, timeout: all mean "not healthy yet"
    sys.exit(1)
