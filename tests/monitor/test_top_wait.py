"""`llmos ps` / `top` show why a process waits (the WAIT column)."""

from __future__ import annotations

from rich.console import Console

from llmos.monitor.top import process_table, wait_text


def row(pid: int, **extra: object) -> dict[str, object]:
    base = {"pid": pid, "owner": "a", "model": "m", "priority": "normal", "arrival_s": 0.0}
    return base | {"state": "waiting", "first_token_s": None} | extra


def test_wait_column_names_the_reason() -> None:
    assert wait_text(row(1, state="running", wait_reason=None)) == "-"
    assert wait_text(row(2, wait_reason="fair-share")) == "fair-share"
    assert wait_text(row(3, state="preempted", wait_reason="memory", is_swapped=True)) == (
        "memory (swapped)"
    )
    console = Console(width=200, record=True)
    console.print(process_table([row(4, wait_reason="reserved")], now_s=1.0))
    text = console.export_text()
    assert "WAIT" in text and "reserved" in text
