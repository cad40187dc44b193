"""wikispeedruns: lobby start, leaderboard and lobby-prompt notifications (docs/protocols/wikispeedruns.md)."""

from relayd.apps.base import AppSpec
from relayd.config.schema import BadValue, Option, integer, number, size, text


def _build(ctx):
    from relayd.apps.wikispeedruns.adapter import WikiSpeedrunsApp

    return WikiSpeedrunsApp(ctx)


def _validate(options):
    for key in ("secret", "trigger_token"):
        if options[key] and len(options[key]) < 16:
            raise BadValue(f"{key} must be at least 16 characters")


SPEC = AppSpec(
    name="wikispeedruns",
    build=_build,
    options={
        "secret": Option(text, "", "HMAC secret shared with the main site; set, only a host token may start a prompt."),
        "trigger_token": Option(text, "", "Bearer token for POST <mount>/leaderboard_update and /lobby_prompts_update."),
        "max_name_length": Option(integer(1, 4096), 64, "Longest user name a wait_start may carry, in characters (before any also renaming)."),
        "max_group_size": Option(integer(1), 500, "Users one lobby prompt group may hold on this node; one more is closed 1008."),
        "joins_per_address": Option(integer(0), 300, "wait_start joins one client address may make per join_window; 0 for no quota."),
        "join_window": Option(number(1, 86400), 60.0, "Seconds over which joins_per_address refills."),
        "roster_interval": Option(number(0, 10), 0.1, "Shortest time between two roster updates to a group (the newest names; the first at once)."),
        "roster_bytes_per_second": Option(size(1024), 2 * 1024 * 1024, "Bytes a group's roster updates may make relayd write per second on this node; a larger group waits longer between them."),
    },
    # the original waited 20 s for a pong; its clients' messages are small, so the 64 KiB default stays
    limit_defaults={"auto_ping_timeout": 20.0},
    validate=_validate,
    clustered=True,
)
