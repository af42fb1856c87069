"""The autoscaling rule (raylm.serve.autoscaler) and its settings in raylm.toml. The rule is
pure (the controller passes the time), so these run in milliseconds; the controller acting
on it, on a real deployment under a real client's load, is in test_lifecycle.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from raylm.autoscaling import Autoscaling, LoadReport
from raylm.config import load_specs
from raylm.errors import ConfigError
from raylm.operations import ScaleResult
from raylm.serve.autoscaler import Autoscaler
from raylm.serve.scaling import Scaling


def _scaler(**kw: float) -> Autoscaler:
    settings = {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_in_flight_per_replica": 2,
        "upscale_delay_s": 10,
        "downscale_delay_s": 30,
        "look_back_s": 1,
    }
    return Autoscaler("m", Autoscaling.model_validate(settings | kw))


def _run(a: Autoscaler, loads: list[float], desired: int, start: float = 0.0) -> list[int | None]:
    """One sample a second; `desired` follows each decision, as the controller's would."""
    out = []
    for i, load in enumerate(loads):
        want = a.observe(start + i, load, desired)
        out.append(want)
        if want is not None:
            desired = want
    return out


def test_a_burst_shorter_than_the_delay_adds_nothing() -> None:
    a = _scaler()
    # (The mean over look_back_s, 1 s here, lengthens it by that much.)
    assert _run(a, [8] * 8 + [2] * 20, desired=1) == [None] * 28
    assert a.wanted == 1


def test_load_held_for_the_delay_adds_what_it_wanted_the_whole_time() -> None:
    a = _scaler()
    # 8 in flight at 2 each wants 4, but for two seconds it wanted only 3: 3 it gets.
    decisions = _run(a, [8, 8, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8], desired=1)
    assert decisions[:10] == [None] * 10
    assert decisions[10] == 3
    assert a.why(1) == "load 8.0 over 1 replica(s), target 2 each"


def test_a_new_count_is_the_base_so_the_same_load_adds_no_more() -> None:
    a = _scaler()
    decisions = _run(a, [6] * 40, desired=1)
    assert [d for d in decisions if d is not None] == [3]


def test_a_lull_shorter_than_the_downscale_delay_removes_nothing() -> None:
    a = _scaler()
    assert _run(a, [0] * 29 + [6] * 5, desired=3) == [None] * 34


def test_an_idle_model_goes_down_to_the_most_it_wanted_over_the_delay_never_below_min() -> None:
    a = _scaler()
    decisions = _run(a, [3] + [0] * 40, desired=4)
    assert decisions[30] == 2  # the first second (3 in flight) wanted 2
    a = _scaler(min_replicas=2)
    assert [d for d in _run(a, [0] * 40, desired=4) if d is not None] == [2]


def test_the_upper_bound_caps_and_a_count_outside_new_bounds_moves_in_at_once() -> None:
    a = _scaler(max_replicas=2)
    assert [d for d in _run(a, [100] * 20, desired=1) if d is not None] == [2]
    assert _scaler(min_replicas=3).observe(0, 0, desired=1) == 3


def test_a_pause_starts_the_streak_over() -> None:
    a = _scaler()
    _run(a, [8] * 9, desired=1)
    a.pause("a rolling update is in progress")
    assert a.status(1).last == "paused: a rolling update is in progress"
    assert _run(a, [8] * 9, desired=1, start=100) == [None] * 9
    a.decided(1, 4, a.why(1))
    status = a.status(4)
    assert (status.ups, status.downs) == (1, 0)
    assert status.last.startswith("scaled 1 -> 4: load 8.0")


def test_bounds_in_the_wrong_order_are_refused_with_the_remedy() -> None:
    with pytest.raises(ValueError, match="raise max_replicas or lower min_replicas"):
        Autoscaling(min_replicas=3, max_replicas=2, target_in_flight_per_replica=1)


def test_raylm_toml_autoscaling_per_model_and_its_errors(tmp_path: Path) -> None:
    spec = tmp_path / "raylm.toml"
    spec.write_text(
        '[[models]]\nmodel = "a"\n[models.autoscaling]\nmax_replicas = 3\n'
        "target_in_flight_per_replica = 4\n"
        '[[models]]\nmodel = "b"\nreplicas = 2\n'
    )
    a, b = load_specs(spec, {})
    assert a.autoscaling is not None and a.autoscaling.max_replicas == 3
    assert a.starting_replicas() == 1 and b.autoscaling is None and b.starting_replicas() == 2
    spec.write_text(
        "replicas = 5\n[autoscaling]\nmax_replicas = 3\ntarget_in_flight_per_replica = 4\n"
    )
    with pytest.raises(ConfigError) as e:
        load_specs(spec, {})
    assert "outside autoscaling's bounds (1-3)" in e.value.message()
    spec.write_text("[autoscaling]\nmax_replicas = 3\n")
    with pytest.raises(ConfigError) as e:
        load_specs(spec, {})
    assert "target_in_flight_per_replica" in e.value.message()


class _Controller(Scaling):
    """The controller's parts autoscaling uses, with room for `room` more replicas."""

    def __init__(self, room: int) -> None:
        self.room = room
        self._autoscalers = {"m": _scaler(upscale_delay_s=0, look_back_s=1)}
        self._loads = {}
        self._desired = {"m": 1}
        self._current = {"m": None}  # type: ignore[dict-item]
        self._rollouts = {}

    async def _scale(self, model: str, replicas: int) -> ScaleResult:
        before, self._desired[model] = self._desired[model], replicas
        return ScaleResult(model=model, before=before, after=replicas)

    def _room_for(self, config: object, count: int) -> bool:
        return count <= self.room

    def _unknown(self, model: str) -> str:
        return f"no {model}"


def test_the_controller_sums_fresh_gateways_takes_what_fits_and_pauses_without_reports() -> None:
    async def scenario() -> None:
        c = _Controller(room=1)
        now = time.monotonic()
        await c._autoscale(now)
        assert c._autoscalers["m"].status(1).last.startswith("paused: no gateway reported")
        c.report_load(LoadReport(gateway="a", load={"m": 5}))
        c.report_load(LoadReport(gateway="b", load={"m": 3}))
        gone = LoadReport(gateway="old", load={"m": 100})
        c._loads["old"] = (now - 60, gone)  # a gateway gone: not counted
        await c._autoscale(time.monotonic())
        status = c._autoscalers["m"].status(c._desired["m"])
        assert c._desired["m"] == 2 and status.load == 8.0  # wanted 4, room for 1 more
        assert status.last.endswith("wanted 4, the cluster has room for 1 more")
        c._rollouts["m"] = "rolling to version 2"
        c.report_load(LoadReport(gateway="a", load={"m": 50}))
        await c._autoscale(time.monotonic())
        assert c._desired["m"] == 2
        assert c._hand_scale_refusal("m", 9) is not None and c._hand_scale_refusal("m", 3) is None

    asyncio.run(scenario())


def test_a_refused_change_of_settings_changes_nothing() -> None:
    async def scenario() -> None:
        c = _Controller(room=0)
        before = c._autoscalers["m"].settings

        async def refuse(model: str, replicas: int) -> ScaleResult:
            return ScaleResult(model=model, before=1, after=1, error="no room", status=409)

        c._scale = refuse  # type: ignore[method-assign]
        raised = Autoscaling(min_replicas=3, max_replicas=4, target_in_flight_per_replica=2)
        result = await c.set_autoscaling("m", raised)
        assert result.status == 409 and result.error == "no room (its autoscaling is unchanged)"
        assert c._autoscalers["m"].settings == before
        assert (await c.set_autoscaling("m", None)).error is None and not c._autoscalers

    asyncio.run(scenario())
