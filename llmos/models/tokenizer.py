"""Tokenizer: one interface over a fast ``tokenizers.Tokenizer``, built from tokenizer.json or GGUF.

Invariants: special tokens written in the text (``<|im_start|>``) are always matched whole; BOS is
added iff ``add_bos_token`` and ``add_special_tokens``; ``decode`` and the incremental decoder
(``detokenizer.py``) agree on every id sequence. GGUF vocabularies are rebuilt the way
transformers' GGUF converter does (its tests are our reference), except that byte-level
pre-tokenizers follow ``tokenizer.ggml.pre`` as llama.cpp does (SmolLM2's "smollm" splits digits).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import BPE

from llmos.errors import ModelLoadError
from llmos.models.detokenizer import IncrementalDecoder

logger = logging.getLogger(__name__)

TokenKind = Literal["byte_level", "sentencepiece", "other"]

# llama.cpp token types (tokenizer.ggml.token_type).
_NORMAL, _CONTROL, _USER_DEFINED, _BYTE = 1, 3, 4, 6

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> how byte-level text is split before BPE (llama.cpp's llama-vocab.cpp).
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_LLAMA3_PRES = ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral")
_QWEN2_PRES = ("qwen2", "deepseek-r1-qwen", "megrez")
# Gemma's GGUF scores do not follow its merge order; the token order in the file does.
_POSITION_RANKED_ARCHS = ("gemma", "gemma2", "gemma3")


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


class Tokenizer:
    """Text <-> token ids for one model; wraps a fast ``tokenizers.Tokenizer``."""

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        bos_token_id: int | None,
        eos_token_ids: Sequence[int],
        add_bos_token: bool,
        kind: TokenKind,
        byte_exact_decode: bool = False,
        strip_leading_space: bool = False,
    ) -> None:
        self.backend = backend
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token_id = bos_token_id
        self.eos_token_ids: list[int] = list(eos_token_ids)
        self.add_bos_token = add_bos_token
        self.kind: TokenKind = kind
        self.bos_token: str | None = self._piece_or_none(bos_token_id)
        first_eos = self.eos_token_ids[0] if self.eos_token_ids else None
        self.eos_token: str | None = self._piece_or_none(first_eos)
        added = backend.get_added_tokens_decoder()
        self.special_token_ids: frozenset[int] = frozenset(
            i for i, tok in added.items() if tok.special
        )
        self._added_token_ids = frozenset(added)
        # SentencePiece byte fallback in `tokenizers` turns a whole run of byte tokens into
        # U+FFFDs when any byte in it is invalid, so text already streamed could change later.
        # We decode such vocabularies from token bytes instead: identical on valid UTF-8, and
        # invalid bytes only ever affect themselves (what streaming needs).
        self._byte_exact_decode = byte_exact_decode
        self._strip_leading_space = strip_leading_space
        self._piece_bytes: list[bytes] | None = None

    def _piece_or_none(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.backend.id_to_token(token_id)

    # --- encode / decode -------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in the text are recognised."""
        ids: list[int] = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        if not self._byte_exact_decode:
            return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))
        table = self._piece_bytes
        if table is None:
            table = self._piece_bytes = [self.token_to_bytes(i) for i in range(self.vocab_size)]
        skip = self.special_token_ids if skip_special_tokens else frozenset()
        try:
            raw = b"".join(table[i] for i in ids if i not in skip)
        except IndexError:
            raise IndexError(f"token id outside the vocabulary ({self.vocab_size})") from None
        text = raw.decode("utf-8", errors="replace")
        return text[1:] if self._strip_leading_space and text.startswith(" ") else text

    def _decode_for_stream(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_str(self, token_id: int) -> str:
        """The text of one token as it reads mid-sentence (leading space kept); for logprobs."""
        return self.token_to_bytes(token_id).decode("utf-8", errors="replace")

    def token_to_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (a byte-fallback token is its single byte)."""
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            raise IndexError(f"token id {token_id} is outside the vocabulary ({self.vocab_size})")
        if token_id in self._added_token_ids:
            return piece.encode("utf-8")
        if self.kind == "byte_level":
            table = unicode_to_byte()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
            return piece.encode("utf-8")
        if self.kind == "sentencepiece":
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                return bytes([int(piece[3:5], 16)])
            return piece.replace("\u2581", " ").encode("utf-8")
        return piece.encode("utf-8")

    def incremental_decoder(
        self, *, skip_special_tokens: bool = True, prompt_ids: Sequence[int] = ()
    ) -> IncrementalDecoder:
        """A streaming decoder whose deltas join to ``decode(all pushed ids)``."""
        return IncrementalDecoder.start(
            self._decode_for_stream, skip_special_tokens=skip_special_tokens, prompt_ids=prompt_ids
        )

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def from_tokenizer_json(
        cls,
        path: Path,
        tokenizer_config: dict[str, Any] | None = None,
        *,
        bos_token_id: int | None = None,
        eos_token_ids: Sequence[int] = (),
    ) -> Tokenizer:
        """From an HF folder's tokenizer.json (+ tokenizer_config.json's dict)."""
        try:
            backend = BackendTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises bare Exception subclasses
            raise ModelLoadError(f"cannot read tokenizer {path}: {e}") from e
        config = tokenizer_config or {}
        raw = json.loads(backend.to_str())
        # The post-processor would add BOS/EOS on its own; we add BOS ourselves (add_bos_token).
        post = json.dumps(raw.get("post_processor") or {})
        backend.post_processor = None
        bos_id = bos_token_id
        if bos_id is None:
            bos_id = _token_id(backend, config.get("bos_token"))
        if not eos_token_ids:
            eos = _token_id(backend, config.get("eos_token"))
            eos_token_ids = [eos] if eos is not None else []
        add_bos = config.get("add_bos_token")
        if add_bos is None:  # older folders say it only through the post-processor template
            add_bos = bos_id is not None and str(backend.id_to_token(bos_id)) in post
        return cls(
            backend,
            bos_token_id=bos_id,
            eos_token_ids=eos_token_ids,
            add_bos_token=bool(add_bos),
            kind=_kind_of(raw),
        )

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> Tokenizer:
        """Rebuild the tokenizer a GGUF describes (tokenizer.ggml.* keys)."""
        model = metadata.get("tokenizer.ggml.model")
        tokens = metadata.get("tokenizer.ggml.tokens")
        if not tokens:
            raise ModelLoadError("GGUF has no tokenizer (tokenizer.ggml.tokens is missing)")
        token_types = metadata.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
        arch = str(metadata.get("general.architecture", ""))
        if model == "gpt2":
            backend = _byte_level_backend(
                tokens, metadata.get("tokenizer.ggml.merges") or [], metadata
            )
            kind: TokenKind = "byte_level"
        elif model == "llama":
            backend = _sentencepiece_backend(tokens, metadata, arch)
            kind = "sentencepiece"
        else:
            raise ModelLoadError(
                f"GGUF tokenizer model {model!r} is not supported",
                hint="supported: gpt2 (byte-level BPE), llama (SentencePiece BPE)",
            )
        _add_special_tokens(backend, tokens, token_types, byte_level=kind == "byte_level")
        bos = metadata.get("tokenizer.ggml.bos_token_id")
        eos = metadata.get("tokenizer.ggml.eos_token_id")
        add_bos = metadata.get("tokenizer.ggml.add_bos_token")
        if add_bos is None:  # llama.cpp adds BOS to SentencePiece vocabularies unless told not to
            add_bos = model == "llama"
        return cls(
            backend,
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=[] if eos is None else [int(eos)],
            add_bos_token=bool(add_bos),
            kind=kind,
            byte_exact_decode=kind == "sentencepiece",
            strip_leading_space=bool(metadata.get("tokenizer.ggml.add_space_prefix", False)),
        )


def _token_id(backend: BackendTokenizer, token: Any) -> int | None:
    if isinstance(token, dict):  # {"content": "<s>", ...} in older tokenizer_config.json files
        token = token.get("content")
    if not isinstance(token, str):
        return None
    found = backend.token_to_id(token)
    return None if found is None else int(found)


def _kind_of(raw: dict[str, Any]) -> TokenKind:
    text = json.dumps([raw.get("pre_tokenizer"), raw.get("decoder")])
    if "ByteLevel" in text:
        return "byte_level"
    if "\u2581" in text or "\\u2581" in text or "ByteFallback" in text:
        return "sentencepiece"
    return "other"


def _byte_level_backend(
    tokens: list[str], merges: list[str], metadata: dict[str, Any]
) -> BackendTokenizer:
    alphabet = set(byte_to_unicode().values())
    spell = byte_to_unicode()
    vocab: dict[str, int] = {}
    for idx, token in enumerate(tokens):
        if not set(token) <= alphabet:  # llama.cpp mislabel: respell its UTF-8 bytes
            token = "".join(spell[b] for b in token.encode("utf-8"))
        vocab[token] = idx
    pairs = [_split_merge(m) for m in merges]
    backend = BackendTokenizer(
        BPE(vocab=vocab, merges=pairs, dropout=None, fuse_unk=False, byte_fallback=False)
    )
    pre = str(metadata.get("tokenizer.ggml.pre", "default"))
    backend.pre_tokenizer = _byte_level_pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    return backend


def _byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in _DIGITS_THEN_GPT2:
        split = pre_tokenizers.Split(Regex(_GPT2_SPLIT), behavior="isolated")
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), split, byte_level]
        )
    if pre in _LLAMA3_PRES or pre in _QWEN2_PRES:
        regex = _LLAMA3_SPLIT if pre in _LLAMA3_PRES else _QWEN2_SPLIT
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(regex), behavior="isolated"), byte_level]
        )
    if pre not in ("default", "gpt2", "gpt-2"):
        logger.warning("unknown GGUF pre-tokenizer %r; using GPT-2's split", pre)
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _split_merge(merge: str) -> tuple[str, str]:
    left, sep, right = merge.partition(" ")
    if not sep or not left or not right:
        raise ModelLoadError(f"GGUF tokenizer has a malformed merge {merge!r}")
    return left, right


def _sentencepiece_backend(
    tokens: list[str], metadata: dict[str, Any], arch: str
) -> BackendTokenizer:
    respelled = list(tokens)
    present = set(tokens)
    for idx, token in enumerate(tokens):
        # Gemma stores runs of spaces as real spaces; the normalizer turns text spaces into "▁".
        if token and token == " " * len(token) and "\u2581" * len(token) not in present:
            respelled[idx] = "\u2581" * len(token)
    vocab = {token: idx for idx, token in reversed(list(enumerate(respelled)))}
    if metadata.get("tokenizer.ggml.merges"):
        merges = [_split_merge(m) for m in metadata["tokenizer.ggml.merges"]]
    else:
        scores = metadata.get("tokenizer.ggml.scores")
        order: Sequence[int]
        if arch in _POSITION_RANKED_ARCHS or not scores:
            order = range(len(respelled))
        else:
            order = sorted(range(len(respelled)), key=lambda i: (-scores[i], i))
        merges = derive_merges(respelled, vocab, order)
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = respelled[int(unk_id)] if unk_id is not None else None
    backend = BackendTokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=True,
            dropout=None,
        )
    )
    steps: list[decoders.Decoder] = [
        decoders.Replace("\u2581", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
    ]
    if metadata.get("tokenizer.ggml.add_space_prefix", False):
        backend.normalizer = normalizers.Sequence(
            [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
        )
        steps.append(decoders.Strip(" ", 1, 0))
    else:
        backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.decoder = decoders.Sequence(steps)
    return backend


def derive_merges(
    tokens: list[str], vocab: dict[str, int], order: Sequence[int]
) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary, best first.

    A token ranked r yields the merges (left, right) for every split whose halves are both in the
    vocabulary, all at rank r (longer left half first); tokens are visited in ``order``.
    """
    merges: list[tuple[str, str]] = []
    for idx in order:
        token = tokens[idx]
        for cut in range(len(token) - 1, 0, -1):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((left, right))
    return merges


def _add_special_tokens(
    backend: BackendTokenizer, tokens: list[str], token_types: list[int], *, byte_level: bool
) -> None:
    """Control tokens become special added tokens, user-defined ones plain added tokens.

    Both are then matched whole in the text. In a byte-level vocabulary a "control" token written
    outside the byte alphabet is a converter mislabel and is skipped (as transformers does).
    """
    alphabet = set(byte_to_unicode().values()) if byte_level else None
    vocab = backend.get_vocab(with_added_tokens=False)
    control = [
        AddedToken(tok, special=True, normalized=False)
        for tok, kind in zip(tokens, token_types, strict=True)
        if kind == _CONTROL and (alphabet is None or set(tok) <= alphabet)
    ]
    user = [
        AddedToken(tok, special=False, normalized=False)
        for tok, kind in zip(tokens, token_types, strict=True)
        if kind == _USER_DEFINED and tok in vocab
    ]
    if control:
        backend.add_special_tokens(control)
    if user:
        backend.add_tokens(user)
