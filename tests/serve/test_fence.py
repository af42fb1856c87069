"""A rank whose node lost the cluster stops its vLLM (raylm.serve.fence): the rule, with
the cluster's answers made up here (milliseconds). The multi-node recipe test cuts a real
machine off the network and checks its vLLM is gone once it is back."""

from __future__ import annotations

import asyncio
import time

import pytest

from raylm.serve import fence


def test_a_node_declared_dead_is_fenced_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([True, True, False])
    monkeypatch.setattr(fence, "node_alive", lambda node_id: next(answers))
    why = asyncio.run(fence.until_fenced("n1", every_s=0.01, fence_s=60))
    assert why == "the cluster declared its node dead"


def test_no_answer_for_the_fence_time_is_fenced_and_an_answer_resets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def unreachable(node_id: str) -> bool | None:
        calls.append(time.monotonic())
        if len(calls) == 3:
            return True  # one answer in between: the clock starts again
        raise ConnectionError("GCS unreachable")

    monkeypatch.setattr(fence, "node_alive", unreachable)
    start = time.monotonic()
    why = asyncio.run(fence.until_fenced("n1", every_s=0.01, fence_s=0.3))
    assert why == "it has not reached the cluster for 0 s"
    assert time.monotonic() - calls[2] >= 0.3 and time.monotonic() - start < 5
