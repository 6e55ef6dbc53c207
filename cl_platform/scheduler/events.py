"""Structured log lines: one JSON object per scheduler event, on stdout (or any text stream).

Every line carries ``ts`` (ISO-8601 UTC), ``time`` (seconds since the epoch), ``event``,
``lineage`` and ``holder`` (the scheduler instance), plus the event's own fields, e.g.::

    {"ts": "2025-01-01T00:00:00.123+00:00", "time": 1735689600.123, "event": "submitted",
     "lineage": "prod", "holder": "host:123:ab12cd34", "task": "parity", "run": "prod-1-parity", ...}

Events (the ``event`` field): see :data:`EVENTS`. Log shippers (Loki, CloudWatch, Datadog) parse
these lines as JSON without configuration.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import threading
import time
from typing import Any, Callable, Optional, TextIO

#: Every event name the scheduler emits, with what it means.
EVENTS: dict[str, str] = {
    "started": "a scheduler process started (settings, store, runner)",
    "settings_differ": "the settings recorded in lineage.json differ from the command line's, which are in force",
    "lease_waiting": "another scheduler holds the lineage lease; this one waits",
    "lease_acquired": "this scheduler now holds the lease and acts on the lineage",
    "lease_lost": "the lease was taken over (this one stopped renewing in time); it stops acting",
    "lease_released": "this scheduler gave the lease back (clean exit)",
    "detected": "a task with _READY that the lineage has not learned was found",
    "validated": "the task passed validation against the lineage's model",
    "quarantined": "the task failed validation; reason recorded, retried only when its files change",
    "released_from_quarantine": "a quarantined or failed task's files changed; it is validated again",
    "submitted": "a round was submitted (Ray job) or started (embedded)",
    "reattached": "an in-flight round from an earlier scheduler was found running and is followed",
    "finished": "a round finished; the task is learned and the lineage's model advanced",
    "failed": "a round failed; retried with backoff, or marked failed after the last attempt",
    "guard_rail": "a round crossed a guard rail (generation drop, forgetting): held on the previous adapter or promoted "
                  "with a warning, by the guard_action setting",
    "tune_started": "the every-K sweep over the recent tasks was submitted; rounds wait for it",
    "tuned": "the every-K sweep ended: its best configuration is the settings of the next rounds (or it failed: "
             "the settings stay)",
    "hook_started": "the every-K-tasks policy hook (e.g. a sweep) was started",
    "error": "an unexpected error in one pass (a store or Ray hiccup); the daemon retries at the next poll",
    "stopped": "the scheduler loop ended",
}


def _now_iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds")


class EventLog:
    """Writes events as JSON lines and keeps the last few in memory.

    Args:
        lineage: the lineage name put on every line.
        holder: the scheduler instance id put on every line.
        stream: where lines go (default ``sys.stdout``); ``None`` writes nowhere.
        clock: time source (tests).
        keep: how many recent events :attr:`recent` keeps.
        sink: optional callable receiving each event dict (tests, metrics exporters).
    """

    def __init__(self, lineage: str, holder: str, *, stream: Optional[TextIO] = sys.stdout,
                 clock: Callable[[], float] = time.time, keep: int = 1000,
                 sink: Optional[Callable[[dict[str, Any]], None]] = None) -> None:
        self.lineage = lineage
        self.holder = holder
        self.stream = stream
        self.clock = clock
        self.keep = keep
        self.sink = sink
        self.recent: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event line and return it. ``event`` must be one of :data:`EVENTS`."""
        if event not in EVENTS:
            raise ValueError(f"unknown scheduler event {event!r}; known: {sorted(EVENTS)}")
        t = self.clock()
        rec = {"ts": _now_iso(t), "time": round(t, 3), "event": event, "lineage": self.lineage,
               "holder": self.holder, **fields}
        line = json.dumps(rec, default=str, sort_keys=False)
        with self._lock:
            self.recent.append(rec)
            del self.recent[:-self.keep]
            if self.stream is not None:
                self.stream.write(line + "\n")
                self.stream.flush()
        if self.sink is not None:
            self.sink(rec)
        return rec

    def of(self, event: str) -> list[dict[str, Any]]:
        """The recent events named ``event``."""
        return [e for e in self.recent if e["event"] == event]


def parse_events(text: str) -> list[dict[str, Any]]:
    """The event objects in ``text`` (lines that are not JSON objects with an ``event`` are skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "event" in obj:
            out.append(obj)
    return out


__all__ = ["EVENTS", "EventLog", "parse_events"]
