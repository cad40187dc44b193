"""clicker: RopeScore scoring devices to judges' screens, protocol draft-1 (docs/protocols/clicker.md)."""

from relayd.apps.base import AppSpec
from relayd.config.schema import Option, integer, number


def _build(ctx):
    from relayd.apps.clicker.adapter import ClickerApp

    return ClickerApp(ctx)


SPEC = AppSpec(
    name="clicker",
    build=_build,
    options={
        "max_listen_ids": Option(integer(1, 10000), 100, "Device ids one listening connection may follow."),
        "registrations_per_address": Option(integer(0), 200, "New device identities one client address may register per registration_window; 0 for no quota."),
        "registration_window": Option(number(1, 30 * 86400), 3600.0, "Seconds over which registrations_per_address refills."),
        "listen_ids_per_address": Option(integer(0), 2000, "Device ids one client address may start to follow per listen_window; 0 for no quota."),
        "listen_window": Option(number(1, 30 * 86400), 3600.0, "Seconds over which listen_ids_per_address refills."),
        "identity_ttl": Option(number(0, 36500), 365.0, "Days after which an identity that neither registered nor scored is removed; 0 keeps them forever."),
    },
    # the original pinged every 30 s and dropped a connection that missed the previous ping
    clustered=True,
    limit_defaults={"auto_ping_interval": 30.0, "auto_ping_timeout": 30.0, "max_message_size": 16 * 1024, "max_frame_size": 16 * 1024},
)
