"""relayd: one Twisted + Autobahn daemon hosting the live servers of small multiplayer games."""

__version__ = "0.1.0"
