"""
The twistd plugin: `twistd -n relayd --config etc/relayd.ini`.

A configuration problem ends start-up with one line naming file, section and key, and a non-zero
exit; `--check` validates and exits.
"""

from __future__ import annotations

import sys

from twisted.python import usage

from relayd import config as relayd_config
from relayd.config import ConfigError


class Options(usage.Options):
    synopsis = "--config FILE [--check]"
    longdesc = "relayd hosts the live WebSocket servers of small multiplayer games."
    optParameters = [["config", "c", "etc/relayd.ini", "The relayd INI configuration file."]]
    optFlags = [["check", None, "Validate the configuration, print the result and exit."]]

    def postOptions(self):
        try:
            self.loaded = relayd_config.load(self["config"])
        except ConfigError as e:
            raise SystemExit(f"relayd: {e}") from None
        if self["check"]:
            loaded = self.loaded
            sys.stdout.write(
                f"relayd: {loaded.path}: OK, listeners {', '.join(loaded.listeners)}; "
                f"apps {', '.join(f'{n} at {a.path}' for n, a in loaded.apps.items()) or 'none'}\n"
            )
            raise SystemExit(0)


def makeService(options, reactor=None):
    from relayd.service import RelaydService

    loaded = options.loaded if hasattr(options, "loaded") else relayd_config.load(options["config"])
    return RelaydService(loaded, reactor=reactor, handle_signals=reactor is None)
