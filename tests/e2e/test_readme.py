"""Acceptance 7: the README's Usage examples run against a live server and say what they promise.

Each command of a ```sh block runs on its own (`bash`, `set -euo pipefail`) and each ```python
block as one script, with the documented default URL replaced by the test server's. Every one
has a check in EXAMPLES on its output (a greedy continuation, the JSON shape, a counter that
moves by exactly the tokens generated), so a broken example fails, not only one that prints
nothing. ```console blocks are interactive or use placeholder pids, and are shown, not run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving import idle, live_stream_pid, wait_until

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULT_URL = "http://127.0.0.1:8000"
BLOCK = re.compile(r"```(sh|python|console)\n(.*?)```", re.S)
# Tokens the counter examples generate between their two runs.
NUM_COUNTED_TOKENS = 5


def usage_blocks(kind: str) -> list[str]:
    text = README.read_text()
    usage = text[text.index("## Usage") :]
    return [body for lang, body in BLOCK.findall(usage) if lang == kind]


def _is_open(text: str) -> bool:
    """True while `text` ends inside a quoted string (a command spanning lines)."""
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return True
    return False


def shell_commands() -> list[str]:
    """Every command of the Usage ```sh blocks (continuation lines and open quotes joined)."""
    commands, current = [], ""
    for block in usage_blocks("sh"):
        for line in block.splitlines():
            current += line + "\n"
            if line.rstrip().endswith("\\") or _is_open(current):
                continue
            if current.strip():
                commands.append(current.strip())
            current = ""
    assert not current.strip(), f"unterminated README command: {current}"
    return commands


# --- what each example must show --------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What a check may compare against: the server, the live pid (if asked for) and the output
    of the same example run before NUM_COUNTED_TOKENS tokens were generated (if asked for)."""

    url: str
    pid: int | None = None
    before: str | None = None


def num_chat_prompt_tokens(url: str, messages: list[dict[str, str]]) -> int:
    """How many tokens the server's chat template makes of `messages` (POST /tokenize)."""
    body = {"model": "smollm2", "messages": messages}
    return int(httpx.post(f"{url}/tokenize", json=body, timeout=30).json()["count"])


def _words_within(out: str, max_tokens: int) -> list[str]:
    words = out.split()
    assert re.search(r"[A-Za-z]{2}", out), f"no text in {out!r}"
    assert len(words) <= max_tokens, f"more words than --max-tokens {max_tokens}: {out!r}"
    return words


def _check_sampled_run(out: str, ctx: Context) -> None:
    _words_within(out, 32)  # sampled text; its prompt is checked by the token count


def _check_haiku(out: str, ctx: Context) -> None:
    _words_within(out, 32)
    assert "kernel" in out.lower(), out  # greedy: "In the heart of the earth, a kernel of life..."


def _check_piped(out: str, ctx: Context) -> None:
    _words_within(out, 16)  # sampled; that the piped text arrived is checked by its `prompt`


def _check_ps(out: str, ctx: Context) -> None:
    assert "PID" in out and re.search(rf"\b{ctx.pid}\b", out), out
    assert "smollm2" in out, out


def _check_chat(out: str, ctx: Context) -> None:
    reply = json.loads(out)
    assert reply["object"] == "chat.completion" and reply["model"] == "smollm2", reply
    (choice,) = reply["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length"), choice
    usage = reply["usage"]
    hello = [{"role": "user", "content": "Hello!"}]
    assert usage["prompt_tokens"] == num_chat_prompt_tokens(ctx.url, hello), usage
    assert 0 < usage["completion_tokens"] <= 32, usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def _check_chat_stream(out: str, ctx: Context) -> None:
    data = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]", out
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks), chunks
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text.strip(), out
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert len(finishes) == 1, finishes
    (usage_chunk,) = [c for c in chunks if c.get("usage")]  # stream_options.include_usage
    assert usage_chunk is chunks[-1] and usage_chunk["choices"] == [], usage_chunk
    assert 0 < usage_chunk["usage"]["completion_tokens"] <= 16, usage_chunk


def _check_completion(out: str, ctx: Context) -> None:
    reply = json.loads(out)
    assert reply["object"] == "text_completion", reply
    (choice,) = reply["choices"]
    assert "Paris" in choice["text"], choice  # greedy: "The capital of France is Paris."
    assert 0 < reply["usage"]["completion_tokens"] <= 8, reply["usage"]


def _check_processes(out: str, ctx: Context) -> None:
    table = json.loads(out)
    assert table["object"] == "list", table
    (row,) = [p for p in table["data"] if p["pid"] == ctx.pid]
    assert row["model"] == "smollm2" and row["priority"] == "normal", row
    assert row["state"] in ("waiting", "running"), row
    assert row["num_prompt_tokens"] > 0 and row["arrival_s"] > 0, row


def _check_stats(out: str, ctx: Context) -> None:
    assert ctx.before is not None
    before, after = json.loads(ctx.before), json.loads(out)
    assert after["model"] == "smollm2" and after["kv_block_size"] > 0, after
    assert 0 < after["kv_blocks_free"] <= after["kv_blocks_total"], after
    assert after["num_generated_tokens"] - before["num_generated_tokens"] == NUM_COUNTED_TOKENS
    assert after["num_finished"] - before["num_finished"] == 1
    assert after["num_live"] == 0 and after["queue_depth"] == 0, after


def _check_health(out: str, ctx: Context) -> None:
    assert json.loads(out)["status"] == "ok", out


def _generation_tokens(out: str) -> float:
    (line,) = out.strip().splitlines()
    match = re.fullmatch(r'llmos:generation_tokens_total\{model_name="smollm2"\} (\S+)', line)
    assert match, line
    return float(match.group(1))


def _check_metrics(out: str, ctx: Context) -> None:
    assert ctx.before is not None
    before, after = _generation_tokens(ctx.before), _generation_tokens(out)
    assert after > 0 and after - before == NUM_COUNTED_TOKENS, (before, after)


@dataclass(frozen=True)
class Example:
    """One README example: a regex that finds it, what its output must show, whether it needs a
    live process (`live`) or runs twice around NUM_COUNTED_TOKENS tokens (`counted`), and the
    user message it must send (`prompt`: the server's prompt-token counter must grow by exactly
    that message's tokens, so a prompt or piped text that never arrived fails)."""

    pattern: str
    check: Callable[[str, Context], None]
    live: bool = False
    counted: bool = False
    prompt: str | None = None


SHELL_EXAMPLES = [
    Example(
        r'^llmos run "Why is the sky blue',
        _check_sampled_run,
        prompt="Why is the sky blue? One sentence.",
    ),
    Example(
        r'^llmos run smollm2 "Write a haiku',
        _check_haiku,
        prompt="Write a haiku about kernels.",
    ),
    Example(
        r'^echo "The quick brown fox" \| llmos run',
        _check_piped,
        prompt="Continue this text:\n\nThe quick brown fox",  # the prompt, then stdin
    ),
    Example(r"^llmos ps\b", _check_ps, live=True),
    Example(r'^curl -s \S+/v1/chat/completions .*"Hello!"', _check_chat),
    Example(r'^curl -sN \S+/v1/chat/completions .*"stream": true', _check_chat_stream),
    Example(r"^curl -s \S+/v1/completions .*capital of France", _check_completion),
    Example(r"^curl -s \S+/os/processes\b", _check_processes, live=True),
    Example(r"^curl -s \S+/os/stats\b", _check_stats, counted=True),
    Example(r"^curl -s \S+/health\b", _check_health),
    Example(r"^curl -s \S+/metrics \| grep", _check_metrics, counted=True),
]


def _example_for(command: str, examples: list[Any]) -> Any:
    found = [e for e in examples if re.search(e.pattern, command, re.S)]
    assert len(found) == 1, f"README example needs exactly one check in EXAMPLES: {command}"
    return found[0]


def test_readme_keeps_the_two_setup_commands() -> None:
    text = README.read_text()
    assert "    make run " in text and "    make test " in text


def test_every_readme_example_has_one_check() -> None:
    commands = shell_commands()
    assert len(commands) >= 10 and len(usage_blocks("python")) >= 2
    for command in commands:
        _example_for(command, SHELL_EXAMPLES)
    for code in usage_blocks("python"):
        _example_for(code, PYTHON_EXAMPLES)
    used = {_example_for(c, SHELL_EXAMPLES).pattern for c in commands}
    assert used == {e.pattern for e in SHELL_EXAMPLES}, "a check whose example left the README"


# --- running them -------------------------------------------------------------------------------


def _env(url: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "LLMOS_URL": url,
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _run_shell(command: str, url: str) -> str:
    script = "set -euo pipefail\n" + command.replace(DEFAULT_URL, url)
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=300, env=_env(url)
    )
    assert result.returncode == 0, f"{script}\n--- stderr:\n{result.stderr}"
    assert '"error"' not in result.stdout, result.stdout
    return result.stdout


def _num_prompt_tokens(url: str) -> float:
    """The server's llmos:prompt_tokens_total (prompt tokens of every admitted process; absent
    until the first one)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r'^llmos:prompt_tokens_total\{model_name="smollm2"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def _generate_counted_tokens(url: str) -> None:
    body = {"model": "smollm2", "prompt": "Hi", "max_tokens": NUM_COUNTED_TOKENS}
    body |= {"ignore_eos": True, "temperature": 0}
    reply = httpx.post(f"{url}/v1/completions", json=body, timeout=120).json()
    assert reply["usage"]["completion_tokens"] == NUM_COUNTED_TOKENS, reply
    assert wait_until(lambda: idle(url), 30)


@pytest.fixture
def live_pid(server_url: str) -> Iterator[int]:
    """A running process (a long stream in a background thread); yields its pid."""
    with live_stream_pid(server_url) as pid:
        yield pid


@pytest.mark.parametrize("command", shell_commands(), ids=lambda c: c.splitlines()[0][:48])
def test_readme_shell_command(server_url: str, command: str, request: pytest.FixtureRequest):
    example = _example_for(command, SHELL_EXAMPLES)
    assert wait_until(lambda: idle(server_url), 30)
    ctx = Context(server_url)
    if example.live:
        ctx = Context(server_url, pid=request.getfixturevalue("live_pid"))
    if example.counted:
        ctx = Context(server_url, before=_run_shell(command, server_url))
        _generate_counted_tokens(server_url)
    prompt_tokens_before = _num_prompt_tokens(server_url)
    out = _run_shell(command, server_url)
    if example.prompt is not None:
        assert wait_until(lambda: idle(server_url), 30)
        expected = num_chat_prompt_tokens(server_url, [{"role": "user", "content": example.prompt}])
        assert _num_prompt_tokens(server_url) - prompt_tokens_before == expected
    example.check(out, ctx)


# --- the Python blocks ---------------------------------------------------------------------------


def _check_openai_sdk(out: str, finished: int) -> None:
    assert finished == 2, finished  # the reply and the stream both ran to their end
    assert re.search(r"[A-Za-z]{2}", out) and len(out.split()) <= 32 + 32, out


def _check_llmos_client(out: str, finished: int) -> None:
    assert finished == 1, finished
    # The streamed answer has no newline of its own, so the count follows it on the same line.
    match = re.fullmatch(r"(.*?)(\d+) free KV blocks\n", out, re.S)
    assert match and re.search(r"[A-Za-z]{2}", match.group(1)), out
    assert int(match.group(2)) > 0, out


@dataclass(frozen=True)
class PythonExample:
    """One README Python block: a regex that finds it and a check of what it printed, given how
    many processes the server finished while it ran."""

    pattern: str
    check: Callable[[str, int], None]


PYTHON_EXAMPLES = [
    PythonExample(r"from openai import OpenAI", _check_openai_sdk),
    PythonExample(r"llmos\.Client\(", _check_llmos_client),
]


def _num_finished(url: str) -> int:
    return int(httpx.get(f"{url}/os/stats", timeout=10).json()["num_finished"])


@pytest.mark.parametrize("index", range(len(usage_blocks("python"))))
def test_readme_python_block(server_url: str, index: int) -> None:
    code = usage_blocks("python")[index]
    example = _example_for(code, PYTHON_EXAMPLES)
    assert wait_until(lambda: idle(server_url), 30)
    finished_before = _num_finished(server_url)
    result = subprocess.run(
        [sys.executable, "-c", code.replace(DEFAULT_URL, server_url)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(server_url),
    )
    assert result.returncode == 0, f"{code}\n--- stderr:\n{result.stderr}"
    assert wait_until(lambda: idle(server_url), 30)
    example.check(result.stdout, _num_finished(server_url) - finished_before)
