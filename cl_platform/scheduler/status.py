"""``scheduler status``: the lineage state as a table or as JSON."""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any, Optional

from cl_platform.scheduler.config import LineageConfigError, LineageSettings, load_settings_record
from cl_platform.scheduler.lease import Lease
from cl_platform.scheduler.progress import lineage_summary
from cl_platform.scheduler.state import StateStore
from cl_platform.store import Store


def build_status(store: Store, lineage: str, *, now: Optional[float] = None) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-able dict.

    Keys: ``lineage``, ``store``, ``settings`` (the settings the last ``run`` recorded, ``None``
    before the first or when the record is unreadable), ``state``
    (the stored state, see :class:`~cl_platform.scheduler.state.LineageState`), ``lease``
    (current record plus ``active``), ``current_model`` (run and checkpoint of the latest
    learned task, ``None`` before the first), ``progress`` (what the lineage knows and forgot:
    the lower-triangular accuracy matrix, the generation curve, current accuracies, average
    forgetting, generation drop and trend; :func:`~cl_platform.scheduler.progress.lineage_summary`).
    """
    now = time.time() if now is None else now
    settings = _recorded_settings(store, lineage)
    state = StateStore(store, lineage).load()
    lease = Lease(store, lineage, holder="status").current()
    latest = state.latest
    return {
        "lineage": lineage,
        "store": store.url,
        "settings": settings,
        "state": state.to_dict(),
        "lease": None if lease is None else {**lease.__dict__, "active": not lease.free(now)},
        "current_model": None if latest is None else {"run": latest.run, "checkpoint": latest.checkpoint,
                                                       "tasks": state.learned_names()},
        "progress": lineage_summary(state.learned),
    }


def _recorded_settings(store: Store, lineage: str) -> Optional[dict[str, Any]]:
    """The recorded settings when they are valid settings (the record is in the shared store:
    anything else is shown as missing rather than trusted)."""
    record = load_settings_record(store, lineage)
    if record is None:
        return None
    try:
        return LineageSettings.from_dict(record).to_dict()
    except (LineageConfigError, TypeError, ValueError):
        return None


def _shown(text: Any, limit: int = 120) -> str:
    """``text`` safe for a terminal: control characters and non-ASCII escaped (a task name, a reason
    or an error comes from the store, where anyone may write), cut to ``limit`` characters."""
    out = str(text).encode("unicode_escape").decode("ascii")
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _t(epoch: Optional[float]) -> str:
    if not epoch:
        return "-"
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:.3f}"
    return str(v)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    rows = [[_shown(c, 200) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _pts(v: Any) -> str:
    return "-" if v is None else f"{100.0 * v:+.1f}"


def _progress_lines(p: dict[str, Any]) -> list[str]:
    """What the lineage knows now: each learned task's current accuracy, forgetting, generation drop, trend."""
    if not p["tasks"]:
        return []
    out = ["", "now (with the current model)"]
    out += _table(["task", "accuracy"], [[t, _num(a)] for t, a in p["current_accuracy"].items()])
    out.append(f"avg accuracy {_num(p['avg_accuracy'])}  avg forgetting {_num(p['avg_forgetting'])}  "
               f"generation drop vs base {_num(p['generation_drop'])}")
    trend = p["trend"]
    if trend:
        out.append(f"trend since the previous round (points): avg accuracy {_pts(trend['avg_accuracy'])}  "
                   f"avg forgetting {_pts(trend['avg_forgetting'])}  generation score {_pts(trend['generation_score'])}")
    return out


def format_status(status: dict[str, Any]) -> str:
    """A human-readable report of :func:`build_status`'s dict."""
    out = [f"lineage {status['lineage']}  store {status['store']}"]
    s = status["settings"]
    if s is None:
        out.append("no settings recorded: the lineage has never been run (or its record is unreadable)")
    else:
        base = f"suite {s['suite']}" if s.get("suite") else f"model {s['model']}"
        out.append(_shown(f"method {s['method']}  base {base}  quick {s['quick']}  steps {s['steps'] or 'default'}  "
                          f"include {','.join(s['include'])}  min_rows {s['min_rows']}  max_attempts {s['max_attempts']}", 400))
    lease = status["lease"]
    if lease is None:
        out.append("lease: never taken")
    else:
        what = "held by" if lease["active"] else "free (last holder"
        end = f" until {_t(lease['expires_at'])}" if lease["active"] else ")"
        out.append(f"lease: {what} {lease['holder']}, generation {lease['generation']}{end}")
    tuned = next((t for t in reversed(status["state"].get("tunes") or []) if t.get("status") == "done"), None)
    out.append("settings in force: " + ("the command line's" if tuned is None else _shown(
        " ".join(f"{k} {v}" for k, v in tuned["params"].items())
        + f" from sweep {tuned['sweep']} (after {tuned['n']} tasks, {tuned['objective']} {_num(tuned.get('value'))}),"
        " over the command line's", 400)))
    if status["state"].get("tuning"):
        out.append(f"sweep in flight: {status['state']['tuning']['run']}")
    cm = status["current_model"]
    out.append("current model: " + ("the base model (nothing learned yet)" if cm is None
                                     else f"run {cm['run']}  checkpoint {cm['checkpoint']}"))
    st = status["state"]
    out.append("")
    out.append(f"learned ({len(st['learned'])})")
    rows = [[str(t["n"]), t["task"], t["run"], _num(t["metrics"].get("accuracy")),
             _num(t["metrics"].get("avg_accuracy")), _num(t["metrics"].get("generation_score")),
             _num(t["metrics"].get("generation_drop")), str(t["attempts"]), _t(t["finished_at"])]
            for t in st["learned"]]
    out += _table(["#", "task", "run", "accuracy", "avg_acc", "gen_score", "gen_drop", "attempts", "learned at"], rows)
    out += _progress_lines(status["progress"])
    inf = st["in_flight"]
    out.append("")
    if inf:
        out.append(f"in flight: task {_shown(inf['task'])}  run {inf['run']}  attempt {inf['attempt']}  "
                   f"{inf['runner']} {inf['submission_id']}" + (f" pid {inf['pid']}" if inf.get("pid") else "")
                   + f"  submitted {_t(inf.get('submitted_at'))}")
    else:
        out.append("in flight: none")
    if st["retries"]:
        out.append("")
        out.append("retrying")
        out += _table(["task", "run", "attempts", "next attempt", "last error"],
                      [[r["task"], r["run"], str(r["attempts"]), _t(r["next_at"]),
                        r["last_error"].strip().splitlines()[-1][:100] if r["last_error"].strip() else ""]
                       for r in st["retries"].values()])
    out.append("")
    out.append(f"quarantined ({len(st['quarantined'])})")
    out += _table(["task", "since", "reason"], [[q["task"], _t(q["at"]), q["reason"]] for q in st["quarantined"].values()])
    out.append("")
    out.append(f"failed ({len(st['failed'])})")
    out += _table(["task", "run", "attempts", "error"],
                  [[f["task"], f["run"], str(f["attempts"]),
                    f["error"].strip().splitlines()[-1][:120] if f["error"].strip() else ""]
                   for f in st["failed"].values()])
    held = st.get("held") or {}
    warned = [t for t in st["learned"] if t.get("crossings")]
    if held or warned:
        out.append("")
        out.append(f"guard rails crossed ({len(held) + len(warned)})")
        rows = [[h["task"], h["run"], "held: not promoted", _crossed(h["crossings"])] for h in held.values()]
        rows += [[t["task"], t["run"], "promoted with a warning", _crossed(t["crossings"])] for t in warned]
        out += _table(["task", "run", "action", "crossed"], rows)
    return "\n".join(out)


def _crossed(crossings: list[dict[str, Any]]) -> str:
    return ", ".join(f"{c['guard']} {_num(c['value'])} > {_num(c['limit'])}" for c in crossings)


__all__ = ["build_status", "format_status"]
