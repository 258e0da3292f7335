"""Durations as people type them (`8h`, `90m`, `1d12h`) and as `env ls` prints them."""

from __future__ import annotations

import re
from datetime import timedelta

from gpuinfra.errors import InputError, Problem

_DURATION = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")
MAX_DURATION = timedelta(days=365)  # a lifetime past a year is a typo, not an environment


def parse_duration(text: str, flag: str) -> timedelta:
    """`1d12h30m`, `8h`, `45m`, `90s`: positive, at most a year. Anything else is an InputError for FLAG."""
    match = _DURATION.match(text.strip()) if text else None
    if not match or not any(match.groupdict().values()):
        raise InputError([Problem(flag, f"{text!r} is not a duration (examples: 8h, 90m, 1d12h)")])
    parts = {key: int(value or 0) for key, value in match.groupdict().items()}
    try:
        duration = timedelta(days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"])
    except OverflowError:  # 99999999999h: far past any bound below
        raise InputError([Problem(flag, f"{text[:40]!r} is longer than {MAX_DURATION.days} days")]) from None
    if duration <= timedelta(0):
        raise InputError([Problem(flag, f"must be longer than 0, got {text!r}")])
    if duration > MAX_DURATION:
        raise InputError([Problem(flag, f"{text!r} is longer than {MAX_DURATION.days} days")])
    return duration


def format_duration(duration: timedelta) -> str:
    """The largest unit and the next one when it is not zero: `1d4h`, `2h30m`, `45m`, `12s`; a minus sign
    before durations in the past."""
    seconds = int(duration.total_seconds())
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    units = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
    for index, (suffix, size) in enumerate(units):
        if seconds >= size or suffix == "s":
            text = f"{seconds // size}{suffix}"
            if index + 1 < len(units):
                next_suffix, next_size = units[index + 1]
                if (seconds % size) // next_size:
                    text += f"{(seconds % size) // next_size}{next_suffix}"
            return sign + text
    raise AssertionError("unreachable: the seconds unit always matches")
