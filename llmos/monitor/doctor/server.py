"""Doctor checks of a running server, over its HTTP API with GETs only: reachability and version,
`/ready` and its reasons, each engine's state (ticking, stalled, crash-looping, restarts, last
error), the resident models against the memory budget, and the recent events that matter.

A server that does not answer fails the diagnosis only when one was named (`--url` or
`$LLMOS_URL`); otherwise the installation alone is checked and "no server running" is reported.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from llmos.kernel.supervisor import EngineState
from llmos.monitor.doctor.base import (
    CheckResult,
    Inspection,
    Response,
    Status,
    fail,
    human_bytes,
    ok,
    warn,
)
from llmos.storage.names import ModelRef, display_id
from llmos.storage.registry import Registry

RESTART = "restart the server: systemctl restart llmos, or stop it and run `llmos serve`"
# /ready reasons -> (status, what it means, fix).
READY_REASONS: dict[str, tuple[Status, str, str | None]] = {
    "draining": ("warn", "the server is shutting down (draining in-flight work)", None),
    "kernel_dead": ("fail", "the kernel is dead: nothing is served", RESTART),
    "engine_loop_stopped": ("fail", "the engine driver thread stopped", RESTART),
    "stalled": ("fail", "the engine is stalled: a tick has not returned", RESTART),
    "engine_stalled": ("fail", "an engine is stalled: a tick has not returned", RESTART),
    "engine_crashloop": ("fail", "a model is crash-looping and marked unavailable", RESTART),
    "engine_restarting": ("warn", "a model's engine is being rebuilt", None),
    "disk_low": ("fail", "the server reports the data dir's disk almost full", "llmos models gc"),
}
# Engine states in /ready's `models` -> (status, description).
ENGINE_STATES: dict[str, tuple[Status, str]] = {
    EngineState.OK: ("ok", "ticking"),
    EngineState.RESTARTING: ("warn", "being rebuilt after repeated failures"),
    EngineState.STALLED: ("fail", "stalled: a tick has not returned"),
    EngineState.CRASHLOOP: ("fail", "crash-looping: its requests get 503 until the cool-down ends"),
    "failed": ("fail", "failed"),
}
# Events worth a line: everything degraded or failed, and why models were evicted.
EVENT_STATUS: dict[str, Status] = {"error": "warn", "warning": "warn"}
NOTABLE_KINDS = ("model_evicted",)
EVENT_WINDOW = timedelta(hours=24)
MAX_EVENTS = 10


def check_server(ins: Inspection) -> list[CheckResult]:
    if ins.url is None:
        return []
    health = ins.get("/health")
    if health is None:
        if not ins.is_url_explicit:
            return [
                ok(
                    "server",
                    f"no server running at {ins.url} (not required: pass --url or set "
                    "$LLMOS_URL to require one)",
                    url=ins.url,
                )
            ]
        return [fail("server", f"server down: nothing answers at {ins.url}", _serve_fix(ins.url))]
    if not isinstance(health.body, dict) or "status" not in health.body:
        return [
            fail(
                "server",
                f"{ins.url} answers HTTP {health.status_code} but not as an llmos server",
                "llmos doctor --url URL_OF_THE_LLMOS_SERVER",
            )
        ]
    return [_reachable(ins), *_readiness(ins)]


def _serve_fix(url: str) -> str:
    parts = urlsplit(url)
    args = f" --host {parts.hostname}" if parts.hostname not in (None, "127.0.0.1") else ""
    args += f" --port {parts.port}" if parts.port not in (None, 8000) else ""
    return f"llmos serve{args}"


def _reachable(ins: Inspection) -> CheckResult:
    version = ins.get("/version")
    theirs = version.body.get("version") if version and isinstance(version.body, dict) else None
    ours = None
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        ours = importlib.metadata.version("llmos")
    if theirs is not None and ours is not None and theirs != ours:
        return warn(
            "server",
            f"server at {ins.url} runs llmos {theirs}, this CLI is {ours}",
            "pip install --upgrade llmos  (on both sides)",
            version=theirs,
        )
    return ok("server", f"server at {ins.url} answers (llmos {theirs or 'unknown'})", url=ins.url)


def _readiness(ins: Inspection) -> list[CheckResult]:
    ready = ins.get("/ready")
    body = ready.body if ready is not None and isinstance(ready.body, dict) else {}
    status, reasons = body.get("status"), body.get("reasons") or []
    if status == "ok":
        return [ok("ready", "ready: serving requests")]
    explained_per_model = isinstance(body.get("models"), list)
    results = []
    if status == "degraded":
        results.append(warn("ready", "degraded: serving, but some models are unavailable"))
    for reason in reasons:
        if explained_per_model and reason in ("engine_crashloop", "engine_restarting"):
            continue  # the engines check names the model
        level, meaning, fix = READY_REASONS.get(reason, ("fail", f"not ready: {reason}", RESTART))
        results.append(CheckResult("ready", level, f"not ready ({reason}): {meaning}", fix))
    if not results and status is None:
        code = ready.status_code if ready is not None else "no answer"
        results.append(fail("ready", f"/ready answered {code} without a status", RESTART))
    return results


def check_engines(ins: Inspection) -> list[CheckResult]:
    ready = ins.get("/ready") if ins.get("/health") is not None else None
    if ready is None or not isinstance(ready.body, dict):
        return []
    models = ready.body.get("models")
    if not isinstance(models, list):
        return [ok("engines", "per-engine states: not reported by this server (unknown)")]
    results = [_engine(m) for m in models if isinstance(m, dict)]
    return results + _resident_memory(ins)


def _engine(entry: dict[str, Any]) -> CheckResult:
    model = str(entry.get("model", "?"))
    state = str(entry.get("state", "unknown"))
    restarts = int(entry.get("restarts") or 0)
    last_error = entry.get("last_error")
    level, meaning = ENGINE_STATES.get(state, ("warn", f"in an unknown state {state!r}"))
    message = f"engine {model}: {meaning}, {restarts} restart(s)"
    if last_error:
        message += f"; last error: {last_error}"
    fix = None
    if level == "fail":
        fix = f"llmos models verify {model}, then {RESTART}"
    return CheckResult(
        "engines",
        level,
        message,
        fix,
        {"model": model, "state": state, "restarts": restarts, "last_error": last_error},
    )


def _resident_memory(ins: Inspection) -> list[CheckResult]:
    stats = ins.get("/os/stats")
    storage = ins.storage()
    if stats is None or stats.status_code != 200 or storage is None:
        return []
    resident = set((stats.body or {}).get("models") or {})
    sizes = {display_id(ModelRef.parse(m.ref)): m.size_bytes for m in Registry(storage).list()}
    memory = ins.settings.memory
    need = sum(sizes.get(name, 0) + memory.kv_cache_bytes + memory.swap_bytes for name in resident)
    budget = ins.settings.kernel.memory_budget()
    names = ", ".join(sorted(resident)) or "none"
    if need > budget:
        return [
            warn(
                "engines",
                f"resident models ({names}) need at least {human_bytes(need)}, over the memory "
                f"budget of {human_bytes(budget)}",
                "export LLMOS_KERNEL__MAX_RESIDENT_MODELS=1  (then restart the server)",
                resident=sorted(resident),
            )
        ]
    return [ok("engines", f"resident: {names} (at least {human_bytes(need)} of the budget)")]


def check_events(ins: Inspection) -> list[CheckResult]:
    if ins.get("/health") is None:
        return []
    response = ins.get("/os/events?limit=1000")  # the newest; _notable keeps the last 24 h
    if response is None:
        return []
    if response.status_code == 404:
        return [ok("events", "this server keeps no event log (GET /os/events: 404)")]
    if response.status_code in (401, 403):
        return [
            warn(
                "events",
                f"cannot read the event log (HTTP {response.status_code}): it needs an admin key",
                "llmos --api-key ADMIN_KEY doctor  (or set $LLMOS_API_KEY)",
            )
        ]
    if response.status_code != 200:
        return [warn("events", f"GET /os/events answered HTTP {response.status_code}")]
    notable = _notable(_events_of(response))
    if not notable:
        return [ok("events", "no warnings, errors or evictions in the last 24 h")]
    results = []
    if len(notable) > MAX_EVENTS:
        results.append(
            ok("events", f"{len(notable) - MAX_EVENTS} earlier event(s) of the last 24 h not shown")
        )
    for event in notable[-MAX_EVENTS:]:
        status = EVENT_STATUS.get(str(event.get("severity")), "ok")
        results.append(CheckResult("events", status, _describe(event), None, {"event": event}))
    return results


def _events_of(response: Response) -> list[dict[str, Any]]:
    body = response.body
    if isinstance(body, dict):
        body = body.get("data", body.get("events"))
    return [e for e in body or [] if isinstance(e, dict)] if isinstance(body, list) else []


def _notable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    since = datetime.now(UTC) - EVENT_WINDOW
    kept = []
    for event in events:
        when = _when(event.get("ts"))
        matters = event.get("severity") in EVENT_STATUS or event.get("kind") in NOTABLE_KINDS
        if matters and (when is None or when >= since):
            kept.append(event)
    return sorted(kept, key=lambda e: e.get("seq") or 0)


def _when(ts: Any) -> datetime | None:
    with contextlib.suppress(TypeError, ValueError, OverflowError, OSError):
        if isinstance(ts, int | float):
            return datetime.fromtimestamp(ts, UTC)
        parsed = datetime.fromisoformat(str(ts))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _describe(event: dict[str, Any]) -> str:
    """'14:02 model_evicted: gemma3 evicted to fit smollm2: idle 20 min' (local time)."""
    when = _when(event.get("ts"))
    clock = when.astimezone().strftime("%H:%M") if when else "--:--"
    what = event.get("message") or event.get("model") or ""
    return f"{clock} {event.get('kind') or 'event'}: {what}"
