"""carparty: one game screen, many phones as controllers (docs/protocols/carparty.md)."""

from relayd.apps.base import AppSpec


def _build(ctx):
    from relayd.apps.carparty.adapter import CarPartyApp

    return CarPartyApp(ctx)


SPEC = AppSpec(
    name="carparty",
    build=_build,
    # tracks travel in ~5000-character chunks and bursts; allow large frames
    clustered=True,
    limit_defaults={"max_message_size": 1024 * 1024, "max_frame_size": 1024 * 1024, "rate_burst": 1000},
)
