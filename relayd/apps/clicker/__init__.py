"""clicker: RopeScore scoring devices to judges' screens, protocol draft-1 (docs/protocols/clicker.md)."""

from relayd.apps.base import AppSpec
from relayd.config.schema import Option, integer


def _build(ctx):
    from relayd.apps.clicker.adapter import ClickerApp

    return ClickerApp(ctx)


SPEC = AppSpec(
    name="clicker",
    build=_build,
    options={
        "max_listen_ids": Option(integer(1, 10000), 100, "Device ids one listening connection may follow."),
    },
    # the original pinged every 30 s and dropped a connection that missed the previous ping
    clustered=True,
    limit_defaults={"auto_ping_interval": 30.0, "auto_ping_timeout": 30.0, "max_message_size": 16 * 1024, "max_frame_size": 16 * 1024},
)
