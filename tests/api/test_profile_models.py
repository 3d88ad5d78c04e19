"""Issue 12 end to end on a real server of its own: `llmos run` answers sensibly with the default
model's profile, a model made with `llmos models create` while the server runs is served by name
with its system prompt, shares its parent's weights, and a request's explicit fields are used as
sent whatever the profile."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import openai
import pytest
from typer.testing import CliRunner

from llmos.cli.app import app
from tests.api.test_profile_defaults import COLORS
from tests.serving import ServerProcess

pytestmark = pytest.mark.slow

runner = CliRunner()
NAME_Q = "What is your name?"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    s = ServerProcess().start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def llmos(server: ServerProcess, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """The CLI against the server's data dir and URL; (exit code, stdout, stderr)."""
    env = {"LLMOS_HOME": server.home.name, "LLMOS_URL": server.url, "HF_HUB_OFFLINE": "1"}
    r = runner.invoke(app, list(args), env=env, input=stdin)
    return r.exit_code, r.stdout, r.stderr


def ask(sdk: openai.OpenAI, model: str, question: str, **fields: object) -> str:
    r = sdk.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        **fields,  # type: ignore[arg-type]
    )
    return r.choices[0].message.content or ""


def test_llmos_run_on_the_default_model_answers_sensibly(server) -> None:
    """Acceptance 1 through the command a newcomer types, no sampling options."""

    def run(question: str, seed: int) -> str:
        code, out, err = llmos(server, "run", question, "--seed", str(seed))
        assert code == 0, err
        return out

    colors = []
    for seed in range(10):
        words = {w.strip(".,;:!*-()\"'").lower() for w in run("Name three colors.", seed).split()}
        colors.append(sum(c in words for c in COLORS))
    tokyo = [("Tokyo" in run("What is the capital of Japan?", seed)) for seed in range(10)]
    assert sum(n >= 2 for n in colors) >= 8, colors
    assert sum(tokyo) >= 9, tokyo


def test_a_created_model_is_served_by_name_with_its_system_prompt(server, sdk) -> None:
    blobs = sorted(os.listdir(os.path.join(server.home.name, "blobs")))
    code, out, err = llmos(
        server, "models", "create", "zorblax", "--from", "smollm2",
        "--system", "Your name is Zorblax.", "-p", "temperature=0", "-p", "max_tokens=24",
    )  # fmt: skip
    assert code == 0, err
    assert sorted(os.listdir(os.path.join(server.home.name, "blobs"))) == blobs  # no new bytes
    listed = [m.id for m in sdk.models.list().data]
    assert "zorblax" in listed and "smollm2" in listed
    card = httpx.get(f"{server.url}/v1/models/zorblax").json()
    assert card["system_prompt"] == "Your name is Zorblax."
    assert (
        card["defaults"]["temperature"] == 0 and card["defaults_source"]["temperature"] == "model"
    )
    assert card["defaults"]["top_p"] == 0.9  # inherited from smollm2's profile
    answer = ask(sdk, "zorblax", NAME_Q)  # no sampling fields, no system message
    assert "Zorblax" in answer, answer
    assert "Zorblax" not in ask(sdk, "smollm2", NAME_Q, temperature=0, max_tokens=24)
    # the request's own system message replaces the profile's
    r = sdk.chat.completions.create(
        model="zorblax",
        messages=[
            {"role": "system", "content": "Your name is Quibbles."},
            {"role": "user", "content": NAME_Q},
        ],
    )
    assert "Zorblax" not in (r.choices[0].message.content or "")
    # `llmos chat` says which defaults it uses and where they come from
    code, _, err = llmos(server, "chat", "zorblax", stdin="/bye\n")
    assert code == 0, err
    assert "temperature=0.0 (model)" in err and "top_k=40 (llmos)" in err, err
    assert "max_tokens=24 (model)" in err and "system prompt: the model's" in err, err


def test_an_explicit_temperature_is_used_as_sent_whatever_the_profile(
    server, sdk, smollm2_gguf_path
) -> None:
    """Acceptance 3: the same fields sent to smollm2 (profile: temperature 0.2, top_p 0.9) and
    to a profile-less copy of the same file sample the same tokens."""
    code, _, err = llmos(server, "models", "import", str(smollm2_gguf_path), "--name", "bare")
    assert code == 0, err
    code, out, _ = llmos(server, "models", "show", "bare")
    assert "llmos defaults" in out  # the file itself ships no sampling defaults
    fields = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 24}
    q = "Write a short poem about the sea."
    hot = [ask(sdk, "smollm2", q, seed=s, **fields) for s in range(3)]
    assert hot == [ask(sdk, "bare", q, seed=s, **fields) for s in range(3)]
    # and the profile's own temperature, left to apply, samples differently
    assert hot != [ask(sdk, "smollm2", q, seed=s, top_p=0.9, max_tokens=24) for s in range(3)]
