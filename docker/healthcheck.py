"""The image's HEALTHCHECK: GET /health on the local backend (with Basic auth when it is set)."""

import base64
import os
import sys
import urllib.request

port = os.environ.get("PORT") or "9090"
request = urllib.request.Request(f"http://127.0.0.1:{port}/health")
user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
if user and password:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
try:
    with urllib.request.urlopen(request, timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # refused, timeout, 401, 5xx: unhealthy
    print(f"healthcheck: {exc}", file=sys.stderr)
    sys.exit(1)
