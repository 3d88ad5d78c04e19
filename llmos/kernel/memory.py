"""Virtual memory for the KV cache: a pool of fixed-size blocks, reference counts, prefix cache.

Invariants: a block's ref count is never negative; every block is exactly one of used
(ref > 0), cached (ref == 0, holds a registered prefix hash) or free (ref == 0, no hash), so
used + cached + free == total; a block in the free queue has ref 0; a block with a hash is in
`_hash_to_block` under that hash. A hash chain starts from its process's cache namespace, so a
block is found only by processes of the same namespace (one owner, one salt, or everyone under
the global scope). See docs/design/kernel.md for the design.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

_NO_HASH = b""
GLOBAL_NAMESPACE = b""  # the seed of chains everyone shares (scope "global"; pools in tests)
PrefixCacheScope = Literal["user", "global"]
_NAMESPACE_PERSON = b"llmos-prefix-ns"


def chain_hash(parent: bytes, token_ids: Sequence[int]) -> bytes:
    """Hash of one full block's tokens, chained to the hash of every block before it."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    return h.digest()


def cache_namespace(owner: str, salt: str | None = None, scope: PrefixCacheScope = "user") -> bytes:
    """The seed of a process's block hash chain: which other processes may hit its blocks.

    A shared cache lets one tenant learn another's prompt from cache hits or time to first
    token ("I Know What You Asked", NDSS 2025), so by default each owner has its own namespace.
    A salt names a namespace shared by everyone who sends it; scope "global" shares one
    namespace among all owners (single-tenant deployments). The kind ("salt", "user") is
    hashed in front of the name, so no salt can ever name a user's private namespace.
    """
    if salt is not None:
        kind, name = b"salt", salt
    elif scope == "global":
        return GLOBAL_NAMESPACE
    else:
        kind, name = b"user", owner
    # surrogatepass: a JSON string may carry a lone surrogate, which plain UTF-8 refuses
    data = kind + b"\0" + name.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16, person=_NAMESPACE_PERSON).digest()


@dataclass(slots=True)
class PoolStats:
    num_total: int
    num_used: int
    num_cached: int
    num_free: int
    num_hits: int
    num_misses: int


class BlockPool:
    """Bookkeeping for `num_blocks` KV blocks of `block_size` tokens (the data lives elsewhere).

    Blocks with ref 0 wait in an LRU queue (oldest first); allocation takes from its front and
    drops a cached block's hash then, so cached prefixes live until memory is actually needed.
    """

    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True):
        assert num_blocks >= 1 and block_size >= 1
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref = [0] * num_blocks
        self._hash = [_NO_HASH] * num_blocks
        self._hash_to_block: dict[bytes, int] = {}
        # ref-0 blocks in eviction order; values unused (an ordered set with O(1) removal)
        self._lru: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.num_hits = 0
        self.num_misses = 0

    # ---- ask -----------------------------------------------------------------------------
    @property
    def num_available(self) -> int:
        """Blocks that can be handed out now (free plus evictable cached)."""
        return len(self._lru)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._lru)

    def ref_count(self, block_id: int) -> int:
        return self._ref[block_id]

    def block_hashes(
        self,
        token_ids: Sequence[int],
        num_blocks: int | None = None,
        *,
        namespace: bytes = GLOBAL_NAMESPACE,
    ) -> list[bytes]:
        """Chained hashes of the full blocks of `token_ids` (at most `num_blocks` of them), the
        chain seeded by `namespace`."""
        hashes: list[bytes] = []
        n = len(token_ids) // self.block_size
        num = n if num_blocks is None else min(num_blocks, n)
        self.extend_hashes(hashes, token_ids, num, namespace=namespace)
        return hashes

    def extend_hashes(
        self,
        hashes: list[bytes],
        token_ids: Sequence[int],
        num_blocks: int,
        *,
        namespace: bytes = GLOBAL_NAMESPACE,
    ) -> None:
        """Append the chained hashes of blocks len(hashes)..num_blocks-1 to `hashes`; an empty
        `hashes` starts the chain from `namespace`."""
        bs = self.block_size
        parent = hashes[-1] if hashes else namespace
        for i in range(len(hashes), num_blocks):
            parent = chain_hash(parent, token_ids[i * bs : (i + 1) * bs])
            hashes.append(parent)

    def find_cached_prefix(
        self, token_ids: Sequence[int], *, namespace: bytes = GLOBAL_NAMESPACE
    ) -> list[int]:
        """Blocks holding the longest prefix of `token_ids` cached in `namespace` (not yet
        referenced).

        The block holding the last token is never returned: its logits must be computed, so
        that token's KV is written, and a shared block is never written into.
        """
        if not self.enable_prefix_caching:
            return []
        max_blocks = (len(token_ids) - 1) // self.block_size
        found: list[int] = []
        for h in self.block_hashes(token_ids, max_blocks, namespace=namespace):
            block_id = self._hash_to_block.get(h)
            if block_id is None:
                break
            found.append(block_id)
        return found

    # ---- act -----------------------------------------------------------------------------
    def allocate(self, n: int) -> list[int]:
        """Take `n` blocks (ref 1 each), evicting least recently used cached blocks if needed."""
        if n > len(self._lru):
            raise MemoryError(f"asked for {n} KV blocks, {len(self._lru)} available")
        out: list[int] = []
        for _ in range(n):
            block_id, _ = self._lru.popitem(last=False)
            self._forget_hash(block_id)
            self._ref[block_id] = 1
            out.append(block_id)
        return out

    def share(self, block_ids: Sequence[int]) -> None:
        """Take a reference on cached or in-use blocks (a prefix-cache hit)."""
        for block_id in block_ids:
            if self._ref[block_id] == 0:
                del self._lru[block_id]
            self._ref[block_id] += 1

    def record_lookup(self, num_hit_blocks: int, num_missed_blocks: int) -> None:
        self.num_hits += num_hit_blocks
        self.num_misses += num_missed_blocks

    def register(self, block_id: int, block_hash: bytes) -> None:
        """Mark a full, computed block as holding the prefix named by `block_hash`."""
        if not self.enable_prefix_caching or self._hash[block_id] != _NO_HASH:
            return
        if block_hash in self._hash_to_block:
            return  # an identical block is already cached; this one stays anonymous
        self._hash[block_id] = block_hash
        self._hash_to_block[block_hash] = block_id

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference from each block; blocks reaching 0 join the LRU queue.

        Freed in reverse so a sequence's tail blocks are evicted before its head, which other
        processes are more likely to share.
        """
        for block_id in reversed(block_ids):
            ref = self._ref[block_id] - 1
            assert ref >= 0, f"double free of KV block {block_id}"
            self._ref[block_id] = ref
            if ref == 0:
                self._lru[block_id] = None

    def reset_prefix_cache(self) -> None:
        for block_id in list(self._lru):
            self._forget_hash(block_id)

    def _forget_hash(self, block_id: int) -> None:
        h = self._hash[block_id]
        if h != _NO_HASH:
            self._hash[block_id] = _NO_HASH
            if self._hash_to_block.get(h) == block_id:
                del self._hash_to_block[h]

    def stats(self) -> PoolStats:
        num_free_queue = len(self._lru)
        num_cached = sum(1 for b in self._lru if self._hash[b] != _NO_HASH)
        return PoolStats(
            num_total=self.num_blocks,
            num_used=self.num_blocks - num_free_queue,
            num_cached=num_cached,
            num_free=num_free_queue - num_cached,
            num_hits=self.num_hits,
            num_misses=self.num_misses,
        )

    def check_invariants(self) -> None:
        """Assert the pool's invariants (tests and debug runs call this)."""
        assert all(r >= 0 for r in self._ref), "negative ref count"
        for block_id in range(self.num_blocks):
            in_lru = block_id in self._lru
            assert in_lru == (self._ref[block_id] == 0), f"block {block_id} queue/ref mismatch"
        for h, block_id in self._hash_to_block.items():
            assert self._hash[block_id] == h, f"block {block_id} hash map mismatch"
        s = self.stats()
        assert s.num_used + s.num_cached + s.num_free == s.num_total
