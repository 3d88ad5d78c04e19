"""llmos.models.tokenizer / detokenizer: GGUF-built tokenizers against transformers' tokenizer from
the same file, special tokens, BOS, token text, and incremental decoding."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from llmos.models.gguf import read_gguf
from llmos.models.tokenizer import Tokenizer
from tests.required import require_transformers

TEXTS = [
    "Hello world",
    "What is the capital of France?",
    "  leading spaces",
    "trailing   ",
    "tab\there\n\nnew\n\n\nlines\r\n",
    "unicode: héllo naïve café Ωμέγα привет 你好世界 こんにちは",
    "emoji 😀👍🏽 🇫🇷 family 👨‍👩‍👧 " + "👍" * 5,
    "code: def f(x):\n    return x**2  # comment\n\tindent\t\t",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nhi<end_of_turn>\n<bos>x<eos>",
    "",
    " ",
    "   ",
    "\n",
    "x" * 200,
    "numbers 1234567890 3.14159 1e-9 2024-01-01",
    "It's they'll we're I'd DON'T",
    "ÀÉÎÕÜ ß ∑∫√ \u200b zero width \u3000 ideographic",
    "<unused0> <mask> [multimodal] <0x41> literal",
    "    four spaces then text\n        eight",
    '{"json": [1, 2, {"k": null}], "s": "a\\"b"}',
]
# llama.cpp's "smollm" pre-tokenizer (and SmolLM2's own tokenizer.json) isolate digits before the
# GPT-2 split; transformers' GGUF converter does not, so they differ when spaces precede digits.
DIGITS_AFTER_SPACES = ["  12", "a  12 b"]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(read_gguf(smollm2_gguf_path).metadata)


@pytest.fixture(scope="module")
def gemma3(gemma3_gguf_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(read_gguf(gemma3_gguf_path).metadata)


def _reference(path: Path):  # type: ignore[no-untyped-def]
    transformers = require_transformers()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _assert_same_as_reference(tok: Tokenizer, ref, texts: list[str]) -> None:  # type: ignore[no-untyped-def]
    for text in texts:
        ids = tok.encode(text)
        assert ids == ref.encode(text), text
        assert tok.encode(text, add_special_tokens=False) == ref.encode(
            text, add_special_tokens=False
        ), text
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(
                ids, skip_special_tokens=skip
            ), (text, skip)


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2: Tokenizer, smollm2_gguf_path: Path) -> None:
    ref = _reference(smollm2_gguf_path)
    _assert_same_as_reference(smollm2, ref, TEXTS)
    assert smollm2.vocab_size == len(ref) == 49152
    assert (smollm2.bos_token, smollm2.eos_token) == (ref.bos_token, ref.eos_token)


@pytest.mark.slow
def test_gemma3_matches_transformers(gemma3: Tokenizer, gemma3_gguf_path: Path) -> None:
    ref = _reference(gemma3_gguf_path)
    _assert_same_as_reference(gemma3, ref, [*TEXTS, *DIGITS_AFTER_SPACES])
    assert gemma3.vocab_size == len(ref) == 262144
    assert (gemma3.bos_token, gemma3.eos_token) == (ref.bos_token, ref.eos_token)


def test_smollm2_isolates_digits_like_llama_cpp(smollm2: Tokenizer) -> None:
    pieces = [smollm2.backend.id_to_token(i) for i in smollm2.encode("  12 345")]
    assert pieces == ["ĠĠ", "1", "2", "Ġ", "3", "4", "5"]


def test_special_tokens_and_bos(smollm2: Tokenizer, gemma3: Tokenizer) -> None:
    assert smollm2.encode("<|im_start|>user") == [1, 4093]
    assert smollm2.add_bos_token is False and smollm2.bos_token_id == 1
    assert smollm2.eos_token_ids == [2] and smollm2.eos_token == "<|im_end|>"
    assert gemma3.add_bos_token is True and gemma3.bos_token == "<bos>"
    ids = gemma3.encode("<start_of_turn>user")
    assert ids[:2] == [2, 105] and gemma3.encode("hi", add_special_tokens=False)[0] != 2
    assert gemma3.decode(ids) == "user"
    assert gemma3.decode(ids, skip_special_tokens=False) == "<bos><start_of_turn>user"


def test_token_to_str_keeps_leading_space(smollm2: Tokenizer, gemma3: Tokenizer) -> None:
    for tok in (smollm2, gemma3):
        ids = tok.encode(" the cat", add_special_tokens=False)
        assert "".join(tok.token_to_str(i) for i in ids) == " the cat"
    emoji = gemma3.encode("😀", add_special_tokens=False)
    assert b"".join(gemma3.token_to_bytes(i) for i in emoji) == "😀".encode()
    assert smollm2.token_to_str(2) == "<|im_end|>"
    with pytest.raises(IndexError):
        smollm2.token_to_bytes(10**9)


# --- incremental decoding ---------------------------------------------------------------------


def _stream(tok: Tokenizer, ids: list[int], **kwargs: object) -> tuple[list[str], str]:
    dec = tok.incremental_decoder(**kwargs)  # type: ignore[arg-type]
    deltas = [dec.push(i) for i in ids]
    return deltas, dec.flush()


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_incremental_decode_equals_decode(which: str, request: pytest.FixtureRequest) -> None:
    tok: Tokenizer = request.getfixturevalue(which)
    for text in TEXTS:
        ids = tok.encode(text)
        for skip in (True, False):
            deltas, rest = _stream(tok, ids, skip_special_tokens=skip)
            assert "".join(deltas) + rest == tok.decode(ids, skip_special_tokens=skip), text
            assert rest == ""  # valid UTF-8 input leaves nothing held back
            assert not any("\ufffd" in d for d in deltas), (text, deltas)


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_incremental_decode_random_ids(which: str, request: pytest.FixtureRequest) -> None:
    """Arbitrary ids (byte tokens, partial characters, specials) still join to decode()."""
    tok: Tokenizer = request.getfixturevalue(which)
    rng = random.Random(0)
    byte_ids = [i for i in range(600) if tok.backend.id_to_token(i).startswith("<0x")]
    pool = byte_ids or list(range(120, 400))
    for _ in range(30):
        ids = [
            rng.choice(pool) if rng.random() < 0.5 else rng.randrange(tok.vocab_size)
            for _ in range(rng.randrange(1, 40))
        ]
        deltas, rest = _stream(tok, ids)
        assert "".join(deltas) + rest == tok.decode(ids)


def test_incremental_decode_holds_back_partial_characters(gemma3: Tokenizer) -> None:
    byte_ids = [gemma3.backend.token_to_id(f"<0x{b:02X}>") for b in "€".encode()]
    dec = gemma3.incremental_decoder()
    assert [dec.push(i) for i in byte_ids] == ["", "", "€"]


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_incremental_decode_after_prompt(which: str, request: pytest.FixtureRequest) -> None:
    tok: Tokenizer = request.getfixturevalue(which)
    prompt = tok.encode("The answer is")
    output = tok.encode(" forty two 😀 done", add_special_tokens=False)
    deltas, rest = _stream(tok, output, prompt_ids=prompt)
    full = tok.decode(prompt + output)
    assert "".join(deltas) + rest == full[len(tok.decode(prompt)) :] == " forty two 😀 done"


def test_incremental_decode_window_stays_small(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("lorem ipsum dolor sit amet " * 300)
    dec = smollm2.incremental_decoder()
    text = "".join(dec.push(i) for i in ids)
    assert text == smollm2.decode(ids)
    assert len(dec.ids) < 100  # O(1) state: old tokens are dropped, not re-decoded
