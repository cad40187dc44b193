"""The apps relayd can host, by the name used in [app:NAME] sections."""

from relayd.apps import carparty, clicker, gameroom, groovejet, testee, wikispeedruns

APPS = {
    spec.name: spec
    for spec in (carparty.SPEC, clicker.SPEC, gameroom.SPEC, groovejet.SPEC, testee.SPEC, wikispeedruns.SPEC)
}
