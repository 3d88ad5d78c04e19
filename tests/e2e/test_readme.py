"""Acceptance 7: the README's Usage examples run against a live server.

Each ```sh block runs as one bash script (`set -euo pipefail`) and each ```python block as one
script, with the documented default URL replaced by the test server's. ```console blocks are
interactive or use placeholder pids, and are shown, not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULT_URL = "http://127.0.0.1:8000"
BLOCK = re.compile(r"```(sh|python|console)\n(.*?)```", re.S)


def usage_blocks(kind: str) -> list[str]:
    text = README.read_text()
    usage = text[text.index("## Usage") :]
    return [body for lang, body in BLOCK.findall(usage) if lang == kind]


def test_readme_keeps_the_two_setup_commands() -> None:
    text = README.read_text()
    assert "    make run " in text and "    make test " in text


def test_readme_has_examples() -> None:
    assert len(usage_blocks("sh")) >= 3 and len(usage_blocks("python")) >= 2


def _env(url: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "LLMOS_URL": url,
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }


@pytest.mark.parametrize("index", range(len(usage_blocks("sh"))))
def test_readme_shell_block(server_url: str, index: int) -> None:
    script = "set -euo pipefail\n" + usage_blocks("sh")[index].replace(DEFAULT_URL, server_url)
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=300, env=_env(server_url)
    )
    assert result.returncode == 0, f"{script}\n--- stderr:\n{result.stderr}"
    assert result.stdout.strip()
    assert '"error"' not in result.stdout, result.stdout


@pytest.mark.parametrize("index", range(len(usage_blocks("python"))))
def test_readme_python_block(server_url: str, index: int) -> None:
    code = usage_blocks("python")[index].replace(DEFAULT_URL, server_url)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(server_url),
    )
    assert result.returncode == 0, f"{code}\n--- stderr:\n{result.stderr}"
    assert result.stdout.strip()
