"""
Typed option declarations: each option says how its text is parsed, its default, and what it means.

The same declarations validate a config file, fill in defaults and generate nothing else: the
documentation in docs/configuration.md is kept beside them by hand.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Mapping

import attr

REQUIRED = object()


class ConfigError(Exception):
    """A configuration problem, located by file, section and key."""

    def __init__(self, path: str, section: str | None, key: str | None, message: str):
        super().__init__(path, section, key, message)
        self.path = path
        self.section = section
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = self.path
        if self.section is not None:
            where += f": [{self.section}]"
        if self.key is not None:
            where += f" {self.key}"
        return f"{where}: {self.message}"


class BadValue(ValueError):
    """Raised by a parser; the loader turns it into a located ConfigError."""


@attr.s(frozen=True, auto_attribs=True)
class Option:
    parse: Callable[[str], Any]
    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""), 10)
        except ValueError:
            raise BadValue(f"{text!r} is not a whole number") from None
        _check_range(value, minimum, maximum)
        return value

    return parse


def number(minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise BadValue(f"{text!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise BadValue(f"{text!r} is not a finite number")
        _check_range(value, minimum, maximum)
        return value

    return parse


def _check_range(value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise BadValue(f"{value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise BadValue(f"{value} is above the maximum {maximum}")


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def size(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """A byte count: a plain number, or one with a K, M or G suffix (powers of 1024)."""

    def parse(text: str) -> int:
        match = _SIZE.match(text)
        if not match:
            raise BadValue(f"{text!r} is not a size (examples: 65536, 64K, 1M)")
        unit = (match.group(2) or "")[:1].lower()
        value = int(match.group(1)) * _SIZE_UNITS[unit]
        _check_range(value, minimum, maximum)
        return value

    return parse


def size_or_auto(minimum: int = 0) -> Callable[[str], int | None]:
    """A byte count as size() reads it, or `auto` (None): the daemon sizes it for the machine."""
    parse_size = size(minimum)

    def parse(text: str) -> int | None:
        if text.strip().lower() == "auto":
            return None
        return parse_size(text)

    return parse


_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise BadValue(f"{text!r} is not one of yes/no, true/false, on/off, 1/0")


def text(value: str) -> str:
    return value.strip()


def nonempty(value: str) -> str:
    value = value.strip()
    if not value:
        raise BadValue("must not be empty")
    return value


def choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.strip().lower()
        if value not in choices:
            raise BadValue(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return parse


def words(value: str) -> tuple[str, ...]:
    """A list separated by commas and/or white space."""
    return tuple(part for part in re.split(r"[\s,]+", value.strip()) if part)


def networks(value: str) -> tuple:
    """Addresses and CIDRs (`127.0.0.1`, `10.0.0.0/8`, `::1`), separated by commas and/or white space."""
    found = []
    for part in words(value):
        try:
            found.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise BadValue(f"{part!r} is not an IP address or CIDR network") from None
    return tuple(found)


def url_path(value: str) -> str:
    value = value.strip()
    if not value.startswith("/"):
        raise BadValue(f"{value!r} must start with /")
    if "?" in value or "#" in value or "//" in value:
        raise BadValue(f"{value!r} is not a plain path")
    return value.rstrip("/") or "/"


def parse_section(
    path: str,
    section: str,
    values: Mapping[str, str],
    options: Mapping[str, Option],
) -> dict[str, Any]:
    """Parse every key of a section against its options; unknown keys and missing required keys fail."""
    for key in values:
        if key not in options:
            known = ", ".join(sorted(options)) or "none"
            raise ConfigError(path, section, key, f"unknown key (known keys: {known})")
    parsed: dict[str, Any] = {}
    for key, option in options.items():
        if key in values:
            try:
                parsed[key] = option.parse(values[key])
            except BadValue as e:
                raise ConfigError(path, section, key, str(e)) from None
        elif option.required:
            raise ConfigError(path, section, key, "missing required key")
        else:
            parsed[key] = option.default
    return parsed
