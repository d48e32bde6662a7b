#!/usr/bin/env python3
"""Health probe for a Graflow worker (the image's HEALTHCHECK; usable as a Kubernetes exec probe).

Healthy means: the worker's metrics endpoint answers AND at least one worker heartbeat
(``graflow_worker_last_heartbeat_timestamp_seconds``) is younger than ``GRAFLOW_HEALTH_MAX_AGE``
seconds (default 60). The heartbeat comes from the worker's heartbeat thread, the same one Redis
uses to decide whether the worker's in-flight tasks must be redelivered, so a wedged worker fails
the probe even while its HTTP server still answers.

Exit code 0 when healthy, 1 otherwise, with one line saying why. Standard library only.

Environment: ``GRAFLOW_METRICS_PORT`` (default 9100), ``GRAFLOW_HEALTH_HOST`` (127.0.0.1),
``GRAFLOW_HEALTH_MAX_AGE`` (60), ``GRAFLOW_HEALTH_TIMEOUT`` (3 seconds for the HTTP request).
"""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.error
import urllib.request

HEARTBEAT = "graflow_worker_last_heartbeat_timestamp_seconds"
# name{labels} value [timestamp]  (Prometheus text format; labels optional)
_SAMPLE = re.compile(r"^" + HEARTBEAT + r"(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")


def heartbeats(text: str) -> list[tuple[str, float]]:
    """Every (labels, value) sample of the heartbeat gauge in a Prometheus text exposition."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group("value"))
        except ValueError:
            continue
        found.append((match.group("labels") or "", value))
    return found


def check(url: str, max_age: float, timeout: float, now: float | None = None) -> tuple[bool, str]:
    """(healthy, reason) for the worker whose metrics are at ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, (
            f"unhealthy: metrics endpoint {url} does not answer ({reason}); "
            "is the worker running with --metrics-port?"
        )
    samples = heartbeats(body)
    if not samples:
        return False, (
            f"unhealthy: {url} exports no {HEARTBEAT} sample yet (worker still starting, or not a Graflow worker)"
        )
    now = time.time() if now is None else now
    newest_labels, newest = max(samples, key=lambda s: s[1])
    age = now - newest
    if age > max_age:
        return False, (
            f"unhealthy: newest heartbeat ({newest_labels or 'no labels'}) is {age:.0f}s old, more than "
            f"GRAFLOW_HEALTH_MAX_AGE={max_age:g}s: the worker's heartbeat thread is stuck"
        )
    return True, f"healthy: {len(samples)} heartbeat(s), newest {max(age, 0.0):.1f}s old"


def main() -> int:
    port = os.environ.get("GRAFLOW_METRICS_PORT", "9100")
    host = os.environ.get("GRAFLOW_HEALTH_HOST", "127.0.0.1")
    try:
        max_age = float(os.environ.get("GRAFLOW_HEALTH_MAX_AGE", "60"))
        timeout = float(os.environ.get("GRAFLOW_HEALTH_TIMEOUT", "3"))
        port_number = int(port)
    except ValueError as exc:
        print(f"unhealthy: bad probe setting ({exc}); GRAFLOW_METRICS_PORT must be a port number and "
              "GRAFLOW_HEALTH_MAX_AGE / GRAFLOW_HEALTH_TIMEOUT numbers of seconds")
        return 1
    ok, reason = check(f"http://{host}:{port_number}/metrics", max_age, timeout)
    print(reason)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
