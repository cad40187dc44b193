"""gameroom: deterministic lock-step multiplayer rooms (docs/protocols/gameroom.md)."""

from relayd.apps.base import AppSpec
from relayd.config.schema import BadValue, Option, choice, integer, number, size, text


def _build(ctx):
    from relayd.apps.gameroom.adapter import GameRoomApp

    return GameRoomApp(ctx)


def _validate(options):
    if options["create_token"] and len(options["create_token"]) < 16:
        raise BadValue("create_token must be at least 16 characters")
    if not options["min_turn_ms"] <= options["turn_ms"] <= options["max_turn_ms"]:
        raise BadValue("turn_ms must lie between min_turn_ms and max_turn_ms")


SPEC = AppSpec(
    name="gameroom",
    build=_build,
    options={
        "create_token": Option(text, "", "Bearer token for POST <mount>/create; empty lets anyone create, within the create quota."),
        "creates_per_address": Option(integer(0), 20, "Rooms one client address may create without the token per create_window; 0 for no quota."),
        "create_window": Option(number(1, 86400), 600.0, "Seconds over which creates_per_address refills."),
        "unjoined_timeout": Option(number(1, 86400), 300.0, "Seconds a room created without the token may wait for its first player before it is abandoned."),
        "public_url": Option(text, "", "Base URL clients reach relayd at (https://games.example); empty: the address of the listener the request came in on."),
        "tick_interval": Option(number(0.001, 1), 0.005, "Seconds between scheduler ticks; a tick serves only the rooms whose deadline passed."),
        "command_delay": Option(integer(1, 16), 2, "Turns between the turn a command is sent for and the turn it executes."),
        "turn_ms": Option(integer(10, 10000), 100, "Initial turn length in milliseconds."),
        "min_turn_ms": Option(integer(10, 10000), 50, "Shortest turn the adaptation may choose."),
        "max_turn_ms": Option(integer(10, 10000), 1000, "Longest turn the adaptation may choose."),
        "iterations_per_turn": Option(integer(1, 1000), 4, "Engine iterations per turn (iterations per command)."),
        "lag_tolerance": Option(number(0, 3600), 5.0, "Seconds a late player is waited for before on_lag applies."),
        "on_lag": Option(choice("substitute", "wait"), "substitute", "After lag_tolerance: substitute empty commands, or keep waiting."),
        "away_timeout": Option(number(0, 86400), 60.0, "Seconds the room waits for a disconnected player before playing on without it."),
        "late_joiners": Option(choice("spectate", "refuse"), "spectate", "Joins to a running or full room: become spectators, or are refused."),
        "max_players": Option(integer(1, 256), 16, "Players one room may expect."),
        "max_rooms": Option(integer(1), 1000, "Rooms held at most (live and archived); at it, the oldest finished archive makes way for a new room."),
        "rooms_per_address": Option(integer(0), 20, "Live rooms (in setup or running) one client address may hold from creates without the token; 0 for no cap."),
        "max_command_bytes": Option(size(16), 4096, "Largest command list one player sends for one turn (JSON bytes)."),
        "max_setup_bytes": Option(size(16), 16384, "Largest setup configuration (JSON bytes)."),
        "max_turns": Option(integer(1), 100000, "Turns after which a game is finished."),
        "max_turn_rate": Option(number(0.1, 1000), 60.0, "Turns per second a room closes at most, however fast packets come."),
        "setup_timeout": Option(number(1), 3600.0, "Seconds a room may stay in setup before it is abandoned."),
        "archive_ttl": Option(number(0), 86400.0, "Seconds a finished game's archive is kept."),
        "max_archive_bytes": Option(size(1024), 64 * 1024 * 1024, "Master packets one room keeps at most (JSON bytes); a game that reaches it finishes (archive_full)."),
        "max_archive_total": Option(size(1024), 1024 * 1024 * 1024, "Master packets all rooms keep together; past it the oldest finished archives go early and creates are refused."),
        "persist_interval": Option(number(0.01, 60), 0.2, "Seconds between writes of changed rooms to the store."),
    },
    validate=_validate,
    clustered=True,
)
