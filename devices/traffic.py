"""The article's data generator: a road traffic simulator on a grid town.

A town is a grid of intersections joined by directed streets (both ways between neighbours).
Vehicles enter on roads coming in from outside, drive a street in a fixed travel time, queue at its end, and
cross when the traffic light there is green for the street's axis and the next street has room;
at each intersection they turn by turning probabilities (straight, left, right, never back), and
at the edge they may leave. Lights alternate between the north-south and east-west axes.

Every tick is one simulated second. ``dump_state()`` gives what Radio broadcasts: the tick, the
time, the vehicle count, and every street's average density over the ticks since the last dump.
The model is deterministic for a given seed; it does no I/O.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Node = tuple[int, int]
"""An intersection: (row, column)."""

STRAIGHT, LEFT, RIGHT = "straight", "left", "right"


def _plus(node: Node, step: Node) -> Node:
    return (node[0] + step[0], node[1] + step[1])


def _minus(node: Node, step: Node) -> Node:
    return (node[0] - step[0], node[1] - step[1])


@dataclass
class Street:
    """A directed street from one intersection to the next."""

    src: Node
    dst: Node
    length: float
    """In metres; density is vehicles per metre."""
    capacity: int
    travel_ticks: int
    queue: deque[tuple[int, int]] = field(default_factory=deque)
    """Vehicles on it, in order: (vehicle id, tick it may reach the end)."""

    @property
    def name(self) -> str:
        """A stable name for the street, as listeners see it."""
        return f"r{self.src[0]}c{self.src[1]}-r{self.dst[0]}c{self.dst[1]}"

    @property
    def axis(self) -> str:
        """NS or EW: which light phase lets it through."""
        return "NS" if self.src[1] == self.dst[1] else "EW"

    @property
    def direction(self) -> Node:
        """The unit step from src to dst."""
        return (self.dst[0] - self.src[0], self.dst[1] - self.src[1])

    def has_room(self) -> bool:
        """Whether one more vehicle fits."""
        return len(self.queue) < self.capacity


@dataclass(frozen=True)
class TownSettings:
    """The shape of the town and of its traffic."""

    rows: int = 3
    columns: int = 3
    street_length: float = 200.0
    capacity: int = 25
    travel_ticks: int = 12
    light_cycle: int = 30
    """Ticks each axis stays green."""
    arrival_rate: float = 0.3
    """Chance per tick that a vehicle arrives at each entry street."""
    exit_probability: float = 0.5
    """Chance that a vehicle whose road goes on out of town leaves rather than turns."""
    turning: tuple[float, float, float] = (0.6, 0.2, 0.2)
    """Straight, left, right weights."""


class Town:
    """The simulation: streets, lights and vehicles, stepped one tick at a time."""

    def __init__(self, settings: TownSettings | None = None, seed: int | None = None) -> None:
        self.settings = s = settings or TownSettings()
        if s.rows < 1 or s.columns < 1 or s.rows * s.columns < 2:
            msg = "a town needs at least two intersections"
            raise ValueError(msg)
        self.random = random.Random(seed)
        self.tick = 0
        self.entered = 0
        self.left = 0
        self._next_vehicle = 0
        self.streets: dict[tuple[Node, Node], Street] = {}
        for row in range(s.rows):
            for col in range(s.columns):
                for step in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                    dst = (row + step[0], col + step[1])
                    if 0 <= dst[0] < s.rows and 0 <= dst[1] < s.columns:
                        self.streets[(row, col), dst] = Street(
                            (row, col), dst, s.street_length, s.capacity, s.travel_ticks
                        )
        self._out: dict[Node, list[Street]] = {}
        for street in self.streets.values():
            self._out.setdefault(street.src, []).append(street)
        # Vehicles come in on streets that continue a road from outside town.
        self.entries = [st for st in self.streets.values() if not self._inside(_minus(st.src, st.direction))]
        self.forced_lights: dict[Node, str] = {}
        self._density_sums = dict.fromkeys(self.streets, 0.0)
        self._ticks_since_dump = 0

    def _inside(self, node: Node) -> bool:
        return 0 <= node[0] < self.settings.rows and 0 <= node[1] < self.settings.columns

    def green_axis(self, node: Node) -> str:
        """The axis whose light is green at an intersection now."""
        if node in self.forced_lights:
            return self.forced_lights[node]
        phase = (self.tick // self.settings.light_cycle + node[0] + node[1]) % 2
        return "NS" if phase == 0 else "EW"

    def force_light(self, node: Node, axis: str) -> None:
        """Hold a light green for one axis (red for the other) for good: a broken light."""
        self.forced_lights[node] = axis

    @property
    def vehicles(self) -> int:
        """Vehicles in town now."""
        return sum(len(st.queue) for st in self.streets.values())

    def step(self) -> None:
        """Advance one tick: crossings at every intersection, then arrivals at the edge."""
        self.tick += 1
        # Heads of queues first, in a fixed order: each street lets at most one vehicle through.
        for street in self.streets.values():
            self._cross(street)
        for street in self.entries:
            if self.random.random() < self.settings.arrival_rate and street.has_room():
                street.queue.append((self._next_vehicle, self.tick + street.travel_ticks))
                self._next_vehicle += 1
                self.entered += 1
        for key, street in self.streets.items():
            self._density_sums[key] += len(street.queue) / street.length
        self._ticks_since_dump += 1

    def _cross(self, street: Street) -> None:
        if not street.queue:
            return
        vehicle, ready_at = street.queue[0]
        if ready_at > self.tick or self.green_axis(street.dst) != street.axis:
            return
        leaves_town = not self._inside(_plus(street.dst, street.direction))
        if leaves_town and self.random.random() < self.settings.exit_probability:
            street.queue.popleft()
            self.left += 1
            return
        options = self._turns(street)
        if not options:  # no street to turn into: the road goes on out of town
            street.queue.popleft()
            self.left += 1
            return
        streets, weights = zip(*options, strict=True)
        chosen: Street = self.random.choices(streets, weights)[0]
        if chosen.has_room():  # otherwise it waits: the junction is blocked
            street.queue.popleft()
            chosen.queue.append((vehicle, self.tick + chosen.travel_ticks))

    def _turns(self, street: Street) -> list[tuple[Street, float]]:
        dy, dx = street.direction
        wanted = {(dy, dx): STRAIGHT, (-dx, dy): LEFT, (dx, -dy): RIGHT}
        weight = dict(zip((STRAIGHT, LEFT, RIGHT), self.settings.turning, strict=True))
        return [
            (nxt, weight[wanted[nxt.direction]])
            for nxt in self._out.get(street.dst, [])
            if nxt.direction in wanted and weight[wanted[nxt.direction]] > 0
        ]

    def dump_state(self) -> dict[str, Any]:
        """The sample to broadcast: averages since the previous dump, which they then reset."""
        ticks = max(self._ticks_since_dump, 1)
        state = {
            "tick": self.tick,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "vehicles": self.vehicles,
            "entered": self.entered,
            "left": self.left,
            "density": {
                st.name: round(self._density_sums[key] / ticks, 6) for key, st in self.streets.items()
            },
        }
        self._density_sums = dict.fromkeys(self.streets, 0.0)
        self._ticks_since_dump = 0
        return state
