"""The block pool: allocation, ref counts, prefix cache, LRU eviction, stats."""

from __future__ import annotations

import pytest

from llmos.kernel.memory import GLOBAL_NAMESPACE, BlockPool, cache_namespace


def test_allocate_and_free_returns_every_block():
    pool = BlockPool(8, 4)
    blocks = pool.allocate(5)
    assert len(set(blocks)) == 5
    assert pool.stats().num_used == 5
    pool.free(blocks)
    s = pool.stats()
    assert (s.num_used, s.num_free, s.num_cached) == (0, 8, 0)
    pool.check_invariants()


def test_over_allocation_raises_and_changes_nothing():
    pool = BlockPool(4, 4)
    pool.allocate(3)
    with pytest.raises(MemoryError):
        pool.allocate(2)
    assert pool.stats().num_used == 3


def test_double_free_is_caught():
    pool = BlockPool(4, 4)
    blocks = pool.allocate(1)
    pool.free(blocks)
    with pytest.raises(AssertionError):
        pool.free(blocks)


def test_prefix_cache_finds_registered_blocks_but_never_the_last_token_block():
    pool = BlockPool(16, 4)
    tokens = list(range(12))  # three full blocks
    blocks = pool.allocate(3)
    for b, h in zip(blocks, pool.block_hashes(tokens), strict=True):
        pool.register(b, h)
    pool.free(blocks)
    assert pool.stats().num_cached == 3
    # same 12 tokens: the block holding the last token is recomputed, so two blocks hit
    assert pool.find_cached_prefix(tokens) == blocks[:2]
    # a longer prompt with the same prefix hits all three
    assert pool.find_cached_prefix(tokens + [99]) == blocks
    # a different first block breaks the chain: nothing hits
    assert pool.find_cached_prefix([7] + tokens[1:] + [99]) == []


def test_shared_block_ref_counts_and_eviction_order():
    pool = BlockPool(4, 2)
    tokens = [1, 2, 3, 4]
    a = pool.allocate(2)
    for b, h in zip(a, pool.block_hashes(tokens), strict=True):
        pool.register(b, h)
    hit = pool.find_cached_prefix(tokens + [5])
    pool.share(hit)
    assert [pool.ref_count(b) for b in a] == [2, 2]
    pool.free(a)
    pool.free(hit)
    assert pool.stats().num_cached == 2
    # allocating everything evicts the cached blocks (LRU) and forgets their hashes
    pool.allocate(4)
    assert pool.find_cached_prefix(tokens + [5]) == []
    pool.check_invariants()


def test_disabled_prefix_cache_never_hits():
    pool = BlockPool(8, 2, enable_prefix_caching=False)
    blocks = pool.allocate(2)
    for b, h in zip(blocks, pool.block_hashes([1, 2, 3, 4]), strict=True):
        pool.register(b, h)
    pool.free(blocks)
    assert pool.find_cached_prefix([1, 2, 3, 4, 5]) == []


def test_namespaces_keep_cached_prefixes_apart():
    pool = BlockPool(16, 4)
    tokens = list(range(12))
    alice, bob = cache_namespace("alice"), cache_namespace("bob")
    blocks = pool.allocate(3)
    for b, h in zip(blocks, pool.block_hashes(tokens, namespace=alice), strict=True):
        pool.register(b, h)
    pool.free(blocks)
    assert pool.find_cached_prefix(tokens + [99], namespace=alice) == blocks
    assert pool.find_cached_prefix(tokens + [99], namespace=bob) == []
    assert pool.find_cached_prefix(tokens + [99]) == []  # the global namespace
    # the namespace seeds the whole chain: no block of bob's chain equals one of alice's
    assert not set(pool.block_hashes(tokens, namespace=bob)) & set(
        pool.block_hashes(tokens, namespace=alice)
    )
    pool.check_invariants()


def test_a_salt_is_shared_across_owners_and_never_names_a_user():
    assert cache_namespace("alice", "team") == cache_namespace("bob", "team")
    assert cache_namespace("alice", "team") != cache_namespace("alice", "team2")
    assert cache_namespace("alice") != cache_namespace("bob")
    assert cache_namespace("alice") == cache_namespace("alice")
    # no salt reaches a user's private namespace, however it is spelled
    for salt in ("alice", "user:alice", "user\0alice", "\0alice", "salt\0alice"):
        assert cache_namespace("bob", salt) != cache_namespace("alice")
    assert cache_namespace("bob", "\ud800") != cache_namespace("bob")  # lone surrogate: no error


def test_global_scope_shares_one_namespace_but_a_salt_still_separates():
    assert cache_namespace("alice", scope="global") == cache_namespace("bob", scope="global")
    assert cache_namespace("alice", scope="global") == GLOBAL_NAMESPACE
    assert cache_namespace("alice", "team", scope="global") == cache_namespace("bob", "team")
    assert cache_namespace("alice", "team", scope="global") != GLOBAL_NAMESPACE
