"""kv-aware routing's parts against vLLM's own KV-event publisher (no engine needed): the
replica side's block keys, the subscriber's gap recovery through vLLM's replay socket, the
gateway's index, and the cost rule (a cached prefix goes to its replica unless that one is
overloaded)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raylm.compat import hide_broken_torch_extensions
from raylm.gateway.kv_index import BlockIndex
from raylm.gateway.kv_policy import KvAware
from raylm.gateway.policy import Candidate, RouteRequest
from raylm.gateway.tokens import PromptTokens
from raylm.kv.blocks import BlockCursor, CachedBlocks, block_keys
from raylm.kv.endpoints import event_dir, kv_events_config
from raylm.kv.subscriber import EventSubscriber
from raylm.replica import ReplicaInfo, ReplicaState

hide_broken_torch_extensions()
kv_events = pytest.importorskip("vllm.distributed.kv_events")

BS = 4  # tokens per block in these tests


def stored(tokens: list[int], hashes: list[int], parent: int | None) -> object:
    return kv_events.BlockStored(
        block_hashes=hashes, parent_block_hash=parent, token_ids=tokens, block_size=BS,
        lora_id=None, medium="GPU", lora_name=None,
    )  # fmt: skip


def batch(*events: object) -> object:
    return kv_events.KVEventBatch(ts=time.time(), events=list(events))


def wait_for(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def publisher() -> Iterator[tuple[object, Path]]:
    d = event_dir()
    cfg = kv_events_config(d)
    pub = kv_events.ZmqEventPublisher(
        data_parallel_rank=0, endpoint=cfg["endpoint"], replay_endpoint=cfg["replay_endpoint"],
        topic=cfg["topic"],
    )  # fmt: skip
    yield pub, d
    pub.shutdown()


def test_events_become_chained_token_keys() -> None:
    blocks = CachedBlocks()
    prompt = list(range(100, 112))  # 3 blocks
    # vLLM stores the first two blocks, then the third chained onto the second.
    # (vLLM sends `extra_keys` per block, None where a block has none.)
    blocks.apply_batch([{"type": "BlockStored", "block_hashes": [11, 12], "parent_block_hash": None,
                         "token_ids": prompt[:8], "block_size": BS,
                         "extra_keys": [None, None]}])  # fmt: skip
    blocks.apply_batch([{"type": "BlockStored", "block_hashes": [13], "parent_block_hash": 12,
                         "token_ids": prompt[8:], "block_size": BS}])  # fmt: skip
    assert blocks.keys() == set(block_keys(prompt, BS))
    first = blocks.delta(None, 0)
    assert first.reset and sorted(first.added) == sorted(block_keys(prompt, BS))
    blocks.apply_batch([{"type": "BlockRemoved", "block_hashes": [13]}])
    d = blocks.delta(first.epoch, first.seq)
    assert not d.reset and d.removed == [block_keys(prompt, BS)[2]] and d.added == []
    # A block whose parent was never seen cannot be keyed: counted, not guessed.
    blocks.apply_batch([{"type": "BlockStored", "block_hashes": [99], "parent_block_hash": 98,
                         "token_ids": [1, 2, 3, 4], "block_size": BS}])  # fmt: skip
    assert blocks.gaps == 1
    # Blocks of a LoRA or with extra keys match on more than tokens: not indexed.
    blocks.apply_batch([{"type": "BlockStored", "block_hashes": [21], "parent_block_hash": None,
                         "token_ids": [7, 7, 7, 7], "block_size": BS,
                         "extra_keys": [("salt",)]}])  # fmt: skip
    assert 21 not in blocks._key_of
    blocks.apply_batch([{"type": "AllBlocksCleared"}])
    assert blocks.keys() == set()
    # A cursor of another stream, or older than the log, gets the whole set again.
    assert blocks.delta("other", 0).reset


def test_subscriber_follows_vllm_publisher_and_replays_a_missed_batch(
    publisher: tuple[object, Path],
) -> None:
    pub, d = publisher
    prompt = list(range(16))
    keys = block_keys(prompt, BS)
    # Published before anyone listens: only the engine's replay socket still has it.
    pub.publish(batch(stored(prompt[:8], [1, 2], None)))  # type: ignore[attr-defined]
    time.sleep(0.3)
    sub = EventSubscriber(d)
    sub.start()
    try:
        time.sleep(0.5)  # the subscription is in place
        pub.publish(batch(stored(prompt[8:], [3, 4], 2)))  # type: ignore[attr-defined]
        wait_for(lambda: sub.delta(None, 0).added and len(sub.delta(None, 0).added) == 4)
        assert set(sub.delta(None, 0).added) == set(keys)
        assert sub.blocks.gaps == 0
    finally:
        sub.close()
    assert not d.exists()


def _replica(rid: str) -> ReplicaInfo:
    return ReplicaInfo(replica_id=rid, model="m", url=f"http://{rid}", node="n",
                       state=ReplicaState.READY)  # fmt: skip


def test_cached_prefix_goes_to_its_replica_unless_overloaded() -> None:
    big = 256  # a real engine's block: cached prefill then outweighs a request in flight
    index = BlockIndex()
    policy = KvAware(index, PromptTokens({}))
    policy.block_sizes["m"] = big
    prompt = list(range(10 * big))
    cached = CachedBlocks()
    cached.apply_batch([{"type": "BlockStored", "block_hashes": list(range(1, 9)),
                         "parent_block_hash": None, "token_ids": prompt[: 8 * big],
                         "block_size": big}])  # fmt: skip
    index.apply("b", cached.delta(None, 0))
    req = RouteRequest("m", tuple(block_keys(prompt, big)))
    a, b = _replica("a"), _replica("b")
    d = policy.choose(req, [Candidate(a, 0), Candidate(b, 1)])
    assert (d.replica.replica_id, d.reason, d.cached_blocks) == ("b", "prefix", 8)
    # Still the cheapest by cost, but past the overload bound (1.5 x least + slack): the
    # least loaded replica instead.
    d = policy.choose(req, [Candidate(a, 0), Candidate(b, 5)])
    assert (d.replica.replica_id, d.reason) == ("a", "overload")
    # A replica that restarted has lost its cache.
    policy.forget("b")
    d = policy.choose(req, [Candidate(a, 1), Candidate(b, 0)])
    assert (d.replica.replica_id, d.reason) == ("b", "no-match")


def test_a_routed_prompt_counts_as_pending_until_events_confirm_it() -> None:
    index = BlockIndex(pending_s=0.5)
    policy = KvAware(index, PromptTokens({}))
    policy.block_sizes["m"] = BS
    req = RouteRequest("m", tuple(block_keys(list(range(20)), BS)))
    a, b = _replica("a"), _replica("b")
    first = policy.choose(req, [Candidate(a, 0), Candidate(b, 0)])
    policy.routed(req, first)
    again = policy.choose(req, [Candidate(a, 1), Candidate(b, 1)])
    assert again.replica == first.replica and again.reason == "prefix"
    time.sleep(0.6)  # never confirmed by an event: forgotten
    assert policy.choose(req, [Candidate(a, 0), Candidate(b, 0)]).reason == "no-match"


def test_index_cursor_and_reset() -> None:
    index = BlockIndex()
    cached = CachedBlocks()
    cached.apply_batch([{"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None,
                         "token_ids": [1, 2, 3, 4], "block_size": BS}])  # fmt: skip
    index.apply("a", cached.delta(None, 0))
    assert index.blocks_held("a") == 1 and index.cursors["a"] == BlockCursor(
        epoch=cached.epoch, seq=cached.seq
    )
    # The replica restarted: a new stream, and the index starts over from its full set.
    fresh = CachedBlocks()
    index.apply("a", fresh.delta(index.cursors["a"].epoch, index.cursors["a"].seq))
    assert index.blocks_held("a") == 0


def test_prompt_tokens_are_the_tokenizers_own() -> None:
    from transformers import AutoTokenizer

    from raylm.models.store import ModelStore

    path = str(ModelStore().resolve(None).path)
    tokens, tok = PromptTokens({"m": path}), AutoTokenizer.from_pretrained(path)
    # Nothing loads on the caller's thread (the gateway's event loop): until `load` ran
    # in the background, prompts are not tokenized and routing goes by load.
    assert tokens.ids("m", "completions", {"prompt": "Hi"}) is None and not tokens.loaded("m")
    tokens.load()
    assert tokens.loaded("m")
    system = "You answer from the manual. " * 40
    for question in ("What is in section 2?", "And section 3?\n\n  Thanks "):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        want = tok.encode(
            tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )
        assert tokens.ids("m", "chat", {"messages": messages}) == want
    content = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    parts = {"messages": [{"role": "user", "content": content}]}
    flat = {"messages": [{"role": "user", "content": "a\nb"}]}
    assert tokens.ids("m", "chat", parts) == tokens.ids("m", "chat", flat)
    assert tokens.ids("m", "completions", {"prompt": "Once upon"}) == tok.encode("Once upon")
    assert tokens.ids("m", "completions", {"prompt": [5, 6]}) == [5, 6]
    assert PromptTokens({}).ids("m", "chat", {"messages": []}) is None


def test_remembered_piece_keys_are_the_keys_of_the_whole_prompt() -> None:
    from raylm.models.store import ModelStore

    path = str(ModelStore().resolve(None).path)
    kv = KvAware(BlockIndex(), PromptTokens({"m": path, "n": path}))
    kv.tokens.load()
    system = "You answer from the manual, clause by clause. " * 60
    history: list[dict[str, str]] = [{"role": "system", "content": system}]
    for size in (16, 7):
        kv.block_sizes.update(m=size, n=size)
        for turn in ("What is in section 2?", "And section 3?", "Thanks.  \n"):
            history = [*history, {"role": "user", "content": turn}]
            body = {"messages": history}
            ids = kv.tokens.ids("m", "chat", body)
            assert ids is not None
            # Twice: the second time every piece comes from memory, with the same keys.
            for model in ("m", "n", "m"):
                assert kv.keys(model, "chat", body) == tuple(block_keys(ids, size))
            history.append({"role": "assistant", "content": "Section " + turn[-3:]})
    prompt = {"prompt": "Once upon a time " * 20}
    ids = kv.tokens.ids("m", "completions", prompt)
    assert ids is not None and kv.keys("m", "completions", prompt) == tuple(block_keys(ids, 7))
