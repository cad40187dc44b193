"""Configuration: the INI schema, its validation and the frozen model the daemon is built from."""

from relayd.config.loader import load, loads
from relayd.config.model import AppConfig, Config, Limits, ListenerConfig
from relayd.config.schema import ConfigError

__all__ = ["AppConfig", "Config", "ConfigError", "Limits", "ListenerConfig", "load", "loads"]
