"""`llmos top`'s screen: kernel totals on top, the process table below, as Rich renderables.

Pure rendering from the API's JSON (`/os/stats`, `/os/processes`), so a frame can be captured in a
test or printed once with `llmos top --once`.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def _bar(fraction: float, width: int = 20) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "#" * filled + "." * (width - filled)


def summary(stats: dict[str, Any]) -> Text:
    total = int(stats.get("kv_blocks_total", 0))
    used = int(stats.get("kv_blocks_used", 0))
    cached = int(stats.get("kv_blocks_cached", 0))
    usage = used / total if total else 0.0
    lines = [
        f"llmos top - {stats.get('model', '?')}   up {stats.get('uptime_s', 0):.0f}s"
        + ("   DRAINING" if stats.get("is_draining") else ""),
        f"processes: {stats.get('num_running', 0)} running, {stats.get('num_waiting', 0)} "
        f"waiting, {stats.get('num_preempted', 0)} preempted   "
        f"preemptions: {stats.get('num_preemptions', 0)}",
        f"throughput: {stats.get('tokens_per_s', 0.0):.1f} tok/s   generated: "
        f"{stats.get('num_generated_tokens', 0)}   prompt: {stats.get('num_prompt_tokens', 0)}",
        f"KV memory: [{_bar(usage)}] {used}/{total} blocks used ({usage:.0%}), {cached} cached"
        f"   prefix-cache hit rate: {stats.get('prefix_cache_hit_rate', 0.0):.0%}",
        _scheduling(stats),
    ]
    return Text("\n".join(lines))


def _scheduling(stats: dict[str, Any]) -> str:
    """The policy, its per-tick cost and how well it predicts output lengths."""
    line = (
        f"scheduler: {stats.get('policy', '?')}   "
        f"cost: {stats.get('schedule_share', 0.0):.2%} of tick time"
    )
    pred = stats.get("predictor") or {}
    if not pred.get("num_trained_on"):
        return line + "   predictor: cold (max_tokens order)"
    tau = pred.get("kendall_tau")
    tau_text = "-" if tau is None else f"{tau:.2f}"
    return (
        line + f"   predictor: tau {tau_text} over {pred.get('num_window', 0)} processes, "
        f"trained on {pred['num_trained_on']}"
    )


# (header, process field): the identity columns keep their full text; numbers are short.
_COLUMNS = (
    ("PID", "pid"),
    ("OWNER", "owner"),
    ("MODEL", "model"),
    ("PRIO", "priority"),
    ("STATE", "state"),
    ("IN", "num_prompt_tokens"),
    ("OUT", "num_output_tokens"),
    ("CACHE", "num_cached_tokens"),
    ("PRE", "num_preemptions"),
    ("AGE", ""),
    ("TTFT", ""),
    ("WAIT", ""),
)
_LEFT = ("OWNER", "MODEL", "PRIO", "STATE", "WAIT")


def process_table(processes: list[dict[str, Any]], *, now_s: float | None = None) -> Table:
    """PID, OWNER, MODEL, PRIO, STATE, IN/OUT/CACHE tokens, PRE(emptions), AGE, TTFT and WAIT
    (why it is not running). Fits 80 columns for the usual rows; on a narrower screen the
    WAIT text folds, and names and numbers are never cut."""
    now_s = time.time() if now_s is None else now_s
    rows = [_row(p, now_s) for p in processes]
    table = Table(box=None, header_style="bold", pad_edge=False)
    for i, (name, _) in enumerate(_COLUMNS):
        table.add_column(
            name,
            justify="left" if name in _LEFT else "right",
            no_wrap=name != "WAIT",
            overflow="fold",
            min_width=6 if name == "WAIT" else max([len(name), *(len(r[i]) for r in rows)]),
        )
    for row in rows:
        table.add_row(*row)
    return table


def _row(p: dict[str, Any], now_s: float) -> list[str]:
    ttft = p.get("first_token_s")
    cells = [str(p.get(key, 0 if key.startswith("num_") else "")) for _, key in _COLUMNS[:9]]
    return [
        *cells,
        f"{max(0.0, now_s - p.get('arrival_s', now_s)):.1f}s",
        "-" if ttft is None else f"{(ttft - p['arrival_s']) * 1000:.0f}ms",
        wait_text(p),
    ]


def wait_text(p: dict[str, Any]) -> str:
    """Why a process is not running (the layer that holds it back), "-" while it runs."""
    reason = p.get("wait_reason")
    if not reason:
        return "-"
    return f"{reason} (swapped)" if p.get("is_swapped") else str(reason)


def frame(stats: dict[str, Any], processes: list[dict[str, Any]]) -> Group:
    """One full `top` screen."""
    return Group(summary(stats), Text(""), process_table(processes))
