#!/usr/bin/env python3
"""Write ``graflow-workers.json``, the Grafana dashboard over the worker metrics.

The JSON is generated so the queries stay consistent (one place builds every selector with the
dashboard's ``$queue`` / ``$worker`` filters); edit this file, then run it::

    python deploy/grafana/make_dashboard.py          # rewrites deploy/grafana/graflow-workers.json

The tests check that the committed JSON is what this script writes, that every query parses as
PromQL, and that every metric and label it uses is exported by a real worker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "graflow-workers.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
Q = 'queue=~"$queue"'
W = 'worker=~"$worker"'
QW = f"{Q},{W}"

# Live = heartbeat younger than a minute (workers beat every few seconds).
LIVE_WORKERS = "count(time() - graflow_worker_last_heartbeat_timestamp_seconds < 60) or vector(0)"


def rate(metric: str, labels: str = QW) -> str:
    return f"rate({metric}{{{labels}}}{RATE})"


def quantile(q: float, by: str = "") -> str:
    group = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({group}) "
        f"({rate('graflow_task_duration_seconds_bucket')}))"
    )


class Layout:
    """Places panels on Grafana's 24-column grid, row by row."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_height = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({
            "type": "row", "id": self._id(), "title": title, "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": [],
        })
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
            self.x = 0
            self.row_height = 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel["datasource"] = DS
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)


def targets(*queries: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend, "range": True}
        for i, (expr, legend) in enumerate(queries)
    ]


def stat(
    title: str, description: str, expr: str, unit: str, thresholds: list[tuple[float | None, str]]
) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "targets": targets((expr, title)),
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "area", "textMode": "value"},
        "fieldConfig": {"defaults": {
            "unit": unit,
            "thresholds": {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in thresholds]},
        }, "overrides": []},
    }


def timeseries(
    title: str, description: str, unit: str, *queries: tuple[str, str], stack: bool = False
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets(*queries),
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "fieldConfig": {"defaults": {
            "unit": unit,
            "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 30,
                       "stacking": {"mode": "normal" if stack else "none", "group": "A"}},
        }, "overrides": []},
    }


def build() -> dict[str, Any]:
    lay = Layout()

    lay.row("Overview")
    lay.add(stat("Live workers", "Workers whose heartbeat is younger than 60 s.", LIVE_WORKERS, "none",
                 [(None, "red"), (1, "green")]), 4, 4)
    lay.add(stat("Throughput", "Tasks finished per second (any outcome).",
                 f"sum({rate('graflow_tasks_processed_total')}) or vector(0)", "ops", [(None, "blue")]), 4, 4)
    lay.add(stat("Success ratio", "Succeeded / processed over the rate window.",
                 f"sum({rate('graflow_tasks_succeeded_total')}) / sum({rate('graflow_tasks_processed_total')})",
                 "percentunit", [(None, "red"), (0.95, "orange"), (0.99, "green")]), 4, 4)
    lay.add(stat("Waiting tasks", "Tasks waiting in the selected queues.",
                 f"sum(max by (queue) (graflow_queue_depth{{{Q}}})) or vector(0)", "none",
                 [(None, "green"), (1000, "orange"), (10000, "red")]), 4, 4)
    lay.add(stat("Dead letters", "Messages in the dead-letter queues of the selected queues.",
                 f"sum(max by (queue) (graflow_dead_letter_depth{{{Q}}})) or vector(0)", "none",
                 [(None, "green"), (1, "red")]), 4, 4)
    lay.add(stat("Active tasks", "Tasks running right now on the selected workers.",
                 f"sum(graflow_active_tasks{{{W}}}) or vector(0)", "none", [(None, "blue")]), 4, 4)

    lay.row("Throughput and outcomes")
    lay.add(timeseries("Throughput per queue", "Tasks finished per second, per queue.", "ops",
                       (f"sum by (queue) ({rate('graflow_tasks_processed_total')})", "{{queue}}")), 12, 8)
    lay.add(timeseries("Outcomes", "Succeeded, failed, retried and redelivered tasks per second.", "ops",
                       (f"sum({rate('graflow_tasks_succeeded_total')})", "succeeded"),
                       (f"sum({rate('graflow_tasks_failed_total')})", "failed"),
                       (f"sum({rate('graflow_tasks_retried_total')})", "retried"),
                       (f"sum({rate('graflow_tasks_redelivered_total')})", "redelivered")), 12, 8)
    lay.add(timeseries("Throughput per worker", "Tasks finished per second, per worker.", "ops",
                       (f"sum by (worker) ({rate('graflow_tasks_processed_total')})", "{{worker}}"), stack=True), 12, 8)
    lay.add(timeseries("Failures, retries and redeliveries per queue", "Per second, per queue.", "ops",
                       (f"sum by (queue) ({rate('graflow_tasks_failed_total')})", "failed {{queue}}"),
                       (f"sum by (queue) ({rate('graflow_tasks_retried_total')})", "retried {{queue}}"),
                       (f"sum by (queue) ({rate('graflow_tasks_redelivered_total')})", "redelivered {{queue}}")),
            12, 8)

    lay.row("Latency")
    lay.add(timeseries("Task duration P50 / P95 / P99", "From the graflow_task_duration_seconds histogram.", "s",
                       (quantile(0.5), "P50"), (quantile(0.95), "P95"), (quantile(0.99), "P99")), 12, 8)
    lay.add(timeseries("Mean task duration per queue", "Duration sum / count over the rate window.", "s",
                       (f"sum by (queue) ({rate('graflow_task_duration_seconds_sum')}) / "
                        f"sum by (queue) ({rate('graflow_task_duration_seconds_count')})", "{{queue}}")), 12, 8)
    lay.add(timeseries("P95 per queue", "95th percentile of task duration, per queue.", "s",
                       (quantile(0.95, "queue"), "{{queue}}")), 12, 8)
    lay.add(timeseries("P95 per worker", "95th percentile of task duration, per worker.", "s",
                       (quantile(0.95, "worker"), "{{worker}}")), 12, 8)

    lay.row("Queues and workers")
    lay.add(timeseries("Queue depth", "Tasks waiting, per queue.", "none",
                       (f"max by (queue) (graflow_queue_depth{{{Q}}})", "{{queue}}")), 12, 8)
    lay.add(timeseries("Dead-letter depth", "Messages in the dead-letter queue, per queue.", "none",
                       (f"max by (queue) (graflow_dead_letter_depth{{{Q}}})", "{{queue}}")), 12, 8)
    lay.add(timeseries("Active tasks per worker", "Tasks running now, per worker.", "none",
                       (f"sum by (worker) (graflow_active_tasks{{{W}}})", "{{worker}}"), stack=True), 12, 8)
    lay.add(timeseries("Heartbeat age per worker", "Seconds since each worker's last heartbeat.", "s",
                       (f"time() - max by (worker) (graflow_worker_last_heartbeat_timestamp_seconds{{{W}}})",
                        "{{worker}}")), 12, 8)

    def variable(name: str, label: str, metric: str) -> dict[str, Any]:
        query = f"label_values({metric}, {name})"
        return {
            "name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
            "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1,
        }

    return {
        "uid": "graflow-workers",
        "title": "Graflow workers",
        "description": "Throughput, outcomes, latency, queue and dead-letter depth of a Graflow worker fleet.",
        "tags": ["graflow", "workers", "redis"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "refresh": 1, "hide": 0},
            variable("queue", "Queue", "graflow_queue_depth"),
            variable("worker", "Worker", "graflow_active_tasks"),
        ]},
        "panels": lay.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
