"""carparty: one game screen, many phones as controllers (docs/protocols/carparty.md)."""

from relayd.apps.base import AppSpec


def _build(ctx):
    from relayd.apps.carparty.adapter import CarPartyApp

    return CarPartyApp(ctx)


SPEC = AppSpec(
    name="carparty",
    build=_build,
    clustered=True,
    # tracks travel in ~5000-character chunks, a few hundred in one burst, and single frames of 100 KB
    # and more are normal: allow large frames, and a phone on a slow link room to receive a whole
    # track before it counts as not reading
    limit_defaults={"max_message_size": 1024 * 1024, "max_frame_size": 1024 * 1024, "max_send_backlog": 8 * 1024 * 1024},
    # the game screen streams state at 60/s to each phone (often addressed, so one frame per phone)
    # and sends its track at the start of a race: 3000/s is six times 60/s to 8 phones
    roles={"server": {"rate_limit": 3000.0, "rate_burst": 6000, "byte_rate": 16 * 1024 * 1024,
                      "byte_burst": 32 * 1024 * 1024}},
)
