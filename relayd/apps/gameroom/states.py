"""
The room state machine, as an explicit table.

Parent states `setup` and `running` (and the end state `finished`); `running` has the child states
`iterating`, `paused.lagging` (a player is late with its packet), `paused.waiting` (a player is
away), and `halted` (state hashes diverged). Every change goes through TRANSITIONS; anything else
is a bug and raises.
"""

from __future__ import annotations

SETUP = "setup"
ITERATING = "running.iterating"
LAGGING = "running.paused.lagging"
WAITING = "running.paused.waiting"
HALTED = "running.halted"
FINISHED = "finished"


TRANSITIONS: dict[tuple[str, str], str] = {
    (SETUP, "start"): ITERATING,
    (SETUP, "abandon"): FINISHED,
    (ITERATING, "late"): LAGGING,
    (ITERATING, "away"): WAITING,
    (LAGGING, "caught_up"): ITERATING,
    (LAGGING, "away"): WAITING,
    (WAITING, "back"): ITERATING,
    (WAITING, "late"): LAGGING,
    (ITERATING, "diverged"): HALTED,
    (LAGGING, "diverged"): HALTED,
    (WAITING, "diverged"): HALTED,
    (ITERATING, "finish"): FINISHED,
    (LAGGING, "finish"): FINISHED,
    (WAITING, "finish"): FINISHED,
    (HALTED, "finish"): FINISHED,
}


class InvalidTransition(Exception):
    pass


def transition(state: str, event: str) -> str:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"{event} is not possible in {state}") from None


def parent(state: str) -> str:
    return state.split(".")[0]


def is_running(state: str) -> bool:
    return parent(state) == "running"
