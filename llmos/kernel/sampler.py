"""The sampler: logits of a batch -> one next token per process, on tensors.

Each process draws its randomness from its own generator (seeded from its `seed`), one uniform
per token, and samples by inverse CDF over its row, so its choices do not depend on which other
processes share the tick. Greedy rows take the argmax of the processed logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmos.kernel.process import Process

_NEG_INF = float("-inf")


@dataclass(slots=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]


class Sampler:
    def __init__(self, vocab_size: int, eos_token_ids: Sequence[int], seed: int = 0) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.seed = seed
        self._generators: dict[int, torch.Generator] = {}

    def forget(self, pid: int) -> None:
        self._generators.pop(pid, None)

    def _generator(self, proc: Process) -> torch.Generator:
        g = self._generators.get(proc.pid)
        if g is None:
            g = torch.Generator()
            seed = (
                proc.params.seed
                if proc.params.seed is not None
                else self.seed * 1_000_003 + proc.pid
            )
            g.manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
            self._generators[proc.pid] = g
        return g

    def sample(self, logits: torch.Tensor, procs: Sequence[Process]) -> SampleResult:
        """logits: [N, V] float32 (row i belongs to procs[i]) -> N token ids (+ logprobs)."""
        logits = logits[:, : self.vocab_size]
        raw = logits
        logits = self._apply_penalties(logits.clone(), procs)
        tokens = torch.argmax(logits, dim=-1)
        random_rows = [i for i, p in enumerate(procs) if not p.params.is_greedy]
        if random_rows:
            idx = torch.tensor(random_rows)
            tokens[idx] = self._sample_random(logits[idx], [procs[i] for i in random_rows])
        token_ids = tokens.tolist()
        return SampleResult(token_ids, self._logprobs(raw, procs, token_ids))

    def _apply_penalties(self, logits: torch.Tensor, procs: Sequence[Process]) -> torch.Tensor:
        for i, p in enumerate(procs):
            sp = p.params
            if sp.logit_bias:
                ids = torch.tensor(list(sp.logit_bias.keys()), dtype=torch.long)
                logits[i, ids] += torch.tensor(list(sp.logit_bias.values()), dtype=logits.dtype)
            if sp.min_tokens and p.num_output_tokens < sp.min_tokens:
                stop_ids = ([] if sp.ignore_eos else self.eos_token_ids) + sp.stop_token_ids
                if stop_ids:
                    logits[i, stop_ids] = _NEG_INF
            if sp.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(p.token_ids)), dtype=torch.long)
                vals = logits[i, seen]
                r = sp.repetition_penalty
                logits[i, seen] = torch.where(vals > 0, vals / r, vals * r)
            if sp.presence_penalty or sp.frequency_penalty:
                out = p.output_token_ids
                if out:
                    counts = torch.bincount(torch.tensor(out), minlength=self.vocab_size)
                    counts = counts[: self.vocab_size].to(logits.dtype)
                    logits[i] -= sp.frequency_penalty * counts
                    logits[i] -= sp.presence_penalty * (counts > 0).to(logits.dtype)
        return logits

    def _sample_random(self, logits: torch.Tensor, procs: Sequence[Process]) -> torch.Tensor:
        """logits: [R, V] -> [R] sampled ids (temperature, top-k, top-p, min-p)."""
        temps = torch.tensor([p.params.temperature for p in procs]).unsqueeze(1)
        logits = logits / temps
        top_ks = [p.params.top_k for p in procs]
        top_ps = [p.params.top_p for p in procs]
        if any(k > 0 for k in top_ks) or any(tp < 1.0 for tp in top_ps):
            logits = _top_k_top_p(logits, top_ks, top_ps)
        probs = torch.softmax(logits, dim=-1)
        min_ps = torch.tensor([p.params.min_p for p in procs]).unsqueeze(1)
        if bool((min_ps > 0).any()):
            probs = probs.masked_fill(probs < min_ps * probs.max(dim=-1, keepdim=True).values, 0)
        # inverse CDF with one uniform per process from its own generator; cumsum runs along
        # each row on its own, so a row's result does not depend on the batch
        cdf = torch.cumsum(probs, dim=-1)
        u = torch.cat([torch.rand(1, generator=self._generator(p)) for p in procs])
        u = (u * cdf[:, -1]).unsqueeze(1)
        ids = torch.searchsorted(cdf, u, right=True).squeeze(1)
        return ids.clamp_(max=logits.shape[1] - 1)

    def _logprobs(
        self, raw: torch.Tensor, procs: Sequence[Process], token_ids: list[int]
    ) -> list[dict[int, float] | None]:
        want = [i for i, p in enumerate(procs) if p.params.logprobs is not None]
        out: list[dict[int, float] | None] = [None] * len(procs)
        if not want:
            return out
        logp = torch.log_softmax(raw[torch.tensor(want)], dim=-1)
        for row, i in enumerate(want):
            k = procs[i].params.logprobs or 0
            d: dict[int, float] = {}
            if k:
                vals, ids = torch.topk(logp[row], k)
                d = dict(zip(ids.tolist(), vals.tolist(), strict=True))
            d[token_ids[i]] = float(logp[row, token_ids[i]])
            out[i] = d
        return out


def _top_k_top_p(logits: torch.Tensor, top_ks: list[int], top_ps: list[float]) -> torch.Tensor:
    """Mask everything outside each row's top-k and top-p nucleus to -inf."""
    V = logits.shape[1]
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    ks = torch.tensor([k if k > 0 else V for k in top_ks]).clamp(max=V)
    ranks = torch.arange(V).unsqueeze(0)
    drop = ranks >= ks.unsqueeze(1)
    probs = torch.softmax(sorted_logits.masked_fill(drop, _NEG_INF), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop |= mass_before >= torch.tensor(top_ps).unsqueeze(1)
    drop[:, 0] = False  # always keep the most likely token
    sorted_logits = sorted_logits.masked_fill(drop, _NEG_INF)
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)
