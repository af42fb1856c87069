"""kv-aware in a gateway over a real replica: a prompt is tokenized and keyed only when the
model has more than one replica (in any state) to choose between. With one, keying would cost the
tokenizer's time on every request and decide nothing."""

from __future__ import annotations

from pathlib import Path

from gateway_harness import MODEL, RunningGateway, replica, wait_for

from raylm.replica import ReplicaState

CHAT = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "Answer in one word. " * 40},
        {"role": "user", "content": "The capital of France?"},
    ],
    "max_tokens": 1,
}


def decisions(gw: RunningGateway, reason: str) -> float:
    return gw.metric("raylm_routing_decisions_total", policy="kv-aware", reason=reason)


def test_prompts_are_keyed_only_when_there_is_a_replica_to_choose(
    replica_url: str, demo_model_path: Path
) -> None:
    settings = {"routing": "kv-aware", "model_dirs": {MODEL: str(demo_model_path)}}
    with RunningGateway([replica(replica_url, "only")], **settings) as gw, gw.client() as c:
        kv = gw.gateway.kv
        assert kv is not None
        wait_for(lambda: kv.tokens.loaded(MODEL), 120)
        kv.block_sizes[MODEL] = 16  # as the engine's first event would say
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert decisions(gw, "no-key") == 1

        # A second replica (the same engine under another name), first starting, then
        # ready: now the prompt is keyed and matched, and routing says so. (While it
        # starts, what is routed to its peer must already count.)
        for state in (ReplicaState.STARTING, ReplicaState.READY):
            gw.source.set([replica(replica_url, "only"), replica(replica_url, "other", state)])
            gw.call(gw.gateway.refresh())
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert decisions(gw, "no-key") == 1
        keyed = sum(decisions(gw, r) for r in ("no-match", "prefix", "cost"))
        assert keyed == 2
        # /generate is keyed the same way, as a completion.
        gen = c.post("/generate", json={"prompt": "Answer in one word. " * 40, "max_tokens": 1})
        assert gen.status_code == 200, gen.text
        assert sum(decisions(gw, r) for r in ("no-match", "prefix", "cost")) == 3
