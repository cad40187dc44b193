"""The apps relayd can host, by the name used in [app:NAME] sections."""

from relayd.apps import testee, wikispeedruns

APPS = {spec.name: spec for spec in (testee.SPEC, wikispeedruns.SPEC)}
