"""llmos.models.chat_template: HF-identical rendering, the sandbox, message validation."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from llmos.errors import InvalidRequest
from llmos.models.chat_template import FALLBACK_TEMPLATE, render_chat, validate_messages
from llmos.models.gguf import read_gguf
from llmos.models.loader import load_model_files
from tests.required import require_transformers

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SMOLLM2_RENDERED = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def smollm2_template(smollm2_gguf_path: Path) -> str:
    return str(read_gguf(smollm2_gguf_path).metadata["tokenizer.chat_template"])


def test_smollm2_template_renders_exactly(smollm2_template: str) -> None:
    assert render_chat(smollm2_template, QUESTION, bos_token="<|im_start|>") == SMOLLM2_RENDERED
    no_prompt = render_chat(smollm2_template, QUESTION, add_generation_prompt=False)
    assert no_prompt == SMOLLM2_RENDERED.removesuffix("<|im_start|>assistant\n")


@pytest.mark.slow
def test_smollm2_template_matches_transformers(
    smollm2_template: str, smollm2_gguf_path: Path
) -> None:
    transformers = require_transformers()
    ref = transformers.AutoTokenizer.from_pretrained(
        str(smollm2_gguf_path.parent), gguf_file=smollm2_gguf_path.name
    )
    chats = [
        QUESTION,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi 👋"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
        ],
    ]
    for messages in chats:
        for gen in (True, False):
            expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert render_chat(smollm2_template, messages, add_generation_prompt=gen) == expected


def test_hf_environment_features() -> None:
    template = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{{ m | tojson }}|{{ tools }}|{{ bos_token }}{{ eos_token }}|{{ flag }}\n"
        "{% endfor %}"
        "{% generation %}gen{% endgeneration %}{{ strftime_now('%Y')|length }}"
    )
    text = render_chat(
        template,
        [{"role": "user", "content": "<b>é</b>"}, {"role": "user", "content": "skipped"}],
        bos_token="<s>",
        eos_token="</s>",
        flag=True,
    )
    assert text == '{"role": "user", "content": "<b>é</b>"}|None|<s></s>|True\ngen4'


def test_trim_and_lstrip_blocks() -> None:
    template = "{% for m in messages %}\n    {% if true %}\n[{{ m['content'] }}]\n    {% endif %}\n{% endfor %}"
    assert render_chat(template, [{"role": "user", "content": "x"}]) == "[x]\n"


def test_fallback_template_for_models_without_one() -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert render_chat(None, messages) == "system: S\n\nuser: Q\n\nassistant:"
    assert render_chat("", messages, add_generation_prompt=False) == "system: S\n\nuser: Q\n\n"
    assert "assistant:" in FALLBACK_TEMPLATE


def test_raise_exception_becomes_invalid_request() -> None:
    gemma_like = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}ok"
    )
    assert render_chat(gemma_like, QUESTION) == "ok"
    with pytest.raises(InvalidRequest, match="System role not supported"):
        render_chat(gemma_like, [{"role": "system", "content": "x"}])
    with pytest.raises(InvalidRequest, match="not valid Jinja"):
        render_chat("{% for %}", QUESTION)


SANDBOX_ESCAPES = [
    "{{ lipsum.__globals__['os'].popen('touch {marker}').read() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% set x = messages.append(1) %}{{ x }}",
    "{{ messages.clear() }}",
]


@pytest.mark.parametrize("template", SANDBOX_ESCAPES)
def test_sandbox_blocks_escapes(template: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(InvalidRequest):
        render_chat(template.replace("{marker}", str(marker)), QUESTION)
    assert not marker.exists()


def test_malicious_gguf_template_does_not_run(tmp_path: Path) -> None:
    """The public PoC for CVE-2024-34359: a GGUF whose chat template runs a shell command."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_merges(["a b"])
    writer.add_chat_template(f"{{{{ lipsum.__globals__['os'].popen('touch {marker}').read() }}}}")
    shapes = {
        "token_embd.weight": (3, 8),
        "output_norm.weight": (8,),
        "blk.0.attn_norm.weight": (8,),
        "blk.0.ffn_norm.weight": (8,),
        "blk.0.attn_q.weight": (8, 8),
        "blk.0.attn_k.weight": (8, 8),
        "blk.0.attn_v.weight": (8, 8),
        "blk.0.attn_output.weight": (8, 8),
        "blk.0.ffn_gate.weight": (16, 8),
        "blk.0.ffn_up.weight": (16, 8),
        "blk.0.ffn_down.weight": (8, 16),
    }
    for name, shape in shapes.items():
        writer.add_tensor(name, np.ones(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    files = load_model_files(path)  # loading never renders the template
    with pytest.raises(InvalidRequest, match="sandbox|rejected"):
        render_chat(files.chat_template, QUESTION)
    assert not marker.exists()


def test_message_validation() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert validate_messages([{"role": "user", "content": parts}])[0]["content"] == "a\nb"
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}
    assert validate_messages([call])[0]["content"] is None
    bad = [
        ([], "non-empty list"),
        ("hi", "non-empty list"),
        ([QUESTION[0], "x"], r"messages\[1\] must be an object"),
        ([{"content": "x"}], r"messages\[0\]\.role"),
        ([{"role": 3, "content": "x"}], r"messages\[0\]\.role"),
        ([QUESTION[0], {"role": "user"}], r"messages\[1\]\.content is missing"),
        ([{"role": "user", "content": 5}], r"messages\[0\]\.content must be"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            r"messages\[0\]\.content\[0\] has type 'image_url'",
        ),
        ([{"role": "user", "content": [{"type": "text", "text": 1}]}], r"content\[0\]\.text"),
    ]
    for messages, match in bad:
        with pytest.raises(InvalidRequest, match=match):
            render_chat(None, messages)  # type: ignore[arg-type]
