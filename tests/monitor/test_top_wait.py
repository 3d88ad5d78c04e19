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


def test_the_table_fits_80_columns_without_cutting_names_or_numbers() -> None:
    usual = row(
        156,
        owner="local",
        model="smollm2",
        state="running",
        num_prompt_tokens=33,
        num_output_tokens=112,
        num_cached_tokens=32,
        first_token_s=0.037,
        wait_reason=None,
    )
    console = Console(width=80, record=True)
    console.print(process_table([usual], now_s=2.5))
    lines = console.export_text().splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines)
    assert lines[0].split() == [
        "PID", "OWNER", "MODEL", "PRIO", "STATE", "IN", "OUT", "CACHE", "PRE", "AGE", "TTFT", "WAIT",
    ]  # fmt: skip
    assert lines[1].split() == [
        "156", "local", "smollm2", "normal", "running", "33", "112", "32", "0", "2.5s", "37ms", "-",
    ]  # fmt: skip
    # a row too wide for the screen keeps its names whole (`llmos ps` then prints wider)
    wide = row(7, model="gemma3-270m-instruct", priority="interactive", wait_reason="memory")
    console = Console(width=60, record=True)
    console.print(process_table([usual, wide | {"is_swapped": True}], now_s=2.5))
    text = console.export_text()
    assert "gemma3-270m-instruct" in text and "interactive" in text
