"""The traffic simulator as a model: conservation, capacity, lights, densities, determinism."""

from __future__ import annotations

import pytest

from radio.devices.traffic import Town, TownSettings


def run(town: Town, ticks: int) -> list[dict]:
    states = []
    for _ in range(ticks):
        town.step()
        states.append(town.dump_state())
    return states


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_vehicles_are_conserved_and_streets_never_overflow(seed):
    town = Town(TownSettings(rows=4, columns=5, arrival_rate=0.6, capacity=8), seed=seed)
    for _ in range(2000):
        town.step()
        assert town.entered == town.left + town.vehicles
        assert all(len(st.queue) <= st.capacity for st in town.streets.values())
    assert town.entered > 500
    assert town.left > 0


def test_densities_stay_within_zero_and_capacity_over_length():
    settings = TownSettings(rows=3, columns=3, arrival_rate=0.9, capacity=10, street_length=150)
    town = Town(settings, seed=7)
    for state in run(town, 600):
        # Densities are rounded to 6 decimals for listeners.
        assert all(
            0 <= d <= settings.capacity / settings.street_length + 1e-6 for d in state["density"].values()
        )
    assert max(state["density"].values()) > 0


def test_a_street_behind_a_permanent_red_fills_up_and_the_one_after_it_empties():
    # One east-west road of four intersections: no side streets to turn in from.
    settings = TownSettings(rows=1, columns=4, arrival_rate=0.8, capacity=6, exit_probability=0.0)
    town = Town(settings, seed=3)
    before = town.streets[(0, 1), (0, 2)]
    after = town.streets[(0, 2), (0, 3)]
    assert any(state["density"][after.name] > 0 for state in run(town, 200))  # it flows while the light works
    town.force_light((0, 2), "NS")  # east-west red for good
    run(town, 400)
    assert len(before.queue) == before.capacity
    assert not after.queue
    assert town.dump_state()["density"][after.name] == 0


def test_the_same_seed_gives_the_same_states():
    def states(seed):
        return [{k: v for k, v in s.items() if k != "time"} for s in run(Town(seed=seed), 300)]

    assert states(42) == states(42)
    assert states(42) != states(43)


def test_a_dump_is_the_samples_shape():
    town = Town(TownSettings(rows=2, columns=2), seed=1)
    first, second = run(town, 2)
    assert (first["tick"], second["tick"]) == (1, 2)
    assert set(second) == {"tick", "time", "vehicles", "entered", "left", "density"}
    assert len(second["density"]) == 8  # 2x2 grid: 4 links, both ways
