"""wikispeedruns: lobby start, leaderboard and lobby-prompt notifications (docs/protocols/wikispeedruns.md)."""

from relayd.apps.base import AppSpec
from relayd.config.schema import BadValue, Option, text


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
    },
    # the original waited 20 s for a pong; its clients' messages are small, so the 64 KiB default stays
    limit_defaults={"auto_ping_timeout": 20.0},
    validate=_validate,
    clustered=True,
)
