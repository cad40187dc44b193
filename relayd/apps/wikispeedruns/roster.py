"""
Who waits in each lobby prompt group, in join order, with names unique in the group.

A roster answers every change with the group's new version and names; versions only grow, so a node
that hears two updates in the wrong order keeps the newer. MemoryRoster is one process and answers
at once; the Redis roster (relayd.apps.wikispeedruns.cluster) is shared by every node.
"""

from __future__ import annotations

from typing import Iterable

import attr
from twisted.internet import defer
from zope.interface import Interface, implementer

ALSO = "also "


@attr.s(frozen=True, auto_attribs=True)
class Roster:
    version: int
    names: tuple[str, ...]


def unique_name(wanted: str, taken: Iterable[str]) -> str:
    """The original's rule: prefix "also " until the name is free."""
    taken = set(taken)
    name = wanted
    while name in taken:
        name = ALSO + name
    return name


class IRoster(Interface):
    def join(group: str, member: str, wanted: str) -> defer.Deferred:
        """Fires with (the member's unique name, Roster) once the member is in the group."""

    def leave(group: str, member: str) -> defer.Deferred:
        """Fires with the group's Roster after the member left, or None when the group is now empty."""


@implementer(IRoster)
class MemoryRoster:
    def __init__(self) -> None:
        self.groups: dict[str, tuple[int, dict[str, str]]] = {}  # group -> (version, member -> name)

    def join(self, group, member, wanted):
        version, members = self.groups.get(group, (0, {}))
        name = unique_name(wanted, members.values())
        members = {**members, member: name}
        self.groups[group] = (version + 1, members)
        return defer.succeed((name, Roster(version + 1, tuple(members.values()))))

    def leave(self, group, member):
        version, members = self.groups.get(group, (0, {}))
        if member not in members:
            return defer.succeed(None)
        members = {m: n for m, n in members.items() if m != member}
        if not members:
            del self.groups[group]
            return defer.succeed(None)
        self.groups[group] = (version + 1, members)
        return defer.succeed(Roster(version + 1, tuple(members.values())))
