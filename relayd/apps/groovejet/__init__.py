"""groovejet: a WebRTC signaling lobby (docs/protocols/groovejet.md)."""

from relayd.apps.base import AppSpec
from relayd.config.schema import Option, boolean, integer, number, size, text


def _build(ctx):
    from relayd.apps.groovejet.adapter import GroovejetApp

    return GroovejetApp(ctx)


SPEC = AppSpec(
    name="groovejet",
    build=_build,
    options={
        "reconnect_grace": Option(number(0, 3600), 30.0, "Seconds a disconnected client's seat is kept for it to resume."),
        "room_expiry": Option(number(1, 7 * 86400), 300.0, "Seconds a room without host and clients is kept before deletion."),
        "unclaimed_expiry": Option(number(1, 3600), 30.0, "Seconds a new room waits for its first client (the host) before it is deleted."),
        "max_rooms": Option(integer(1), 10000, "Rooms this node holds at most."),
        "rooms_per_address": Option(integer(0), 30, "Rooms one client address may create per create_window (POST rooms and createRoom); 0 for no quota."),
        "create_window": Option(number(1, 86400), 600.0, "Seconds over which rooms_per_address refills."),
        "create_token": Option(text, "", "Bearer token for POST <mount>/rooms; when set, only its bearer creates rooms over HTTP, outside the quota."),
        "host_migration": Option(boolean, True, "Promote a guest when the host has not come back within the grace."),
        "max_snapshot_size": Option(size(1), 256 * 1024, "Largest game-state snapshot, as JSON bytes."),
        "max_signal_size": Option(size(1), 64 * 1024, "Largest signal (SDP offer/answer, ICE candidate) data, as JSON bytes."),
    },
    clustered=True,
    # the original pinged every 10 s; snapshots need room above the 64 KiB default
    limit_defaults={"auto_ping_interval": 10.0, "max_message_size": 512 * 1024, "max_frame_size": 512 * 1024},
    # the host answers every guest's offer and trickles ICE candidates to each, and stores snapshots
    roles={"host": {"rate_limit": 1000.0, "rate_burst": 2000, "byte_rate": 8 * 1024 * 1024,
                    "byte_burst": 16 * 1024 * 1024}},
)
