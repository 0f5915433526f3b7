"""Option value parsing: sizes, creation times, commands and KEY=VALUE pairs."""

from __future__ import annotations

import pytest

from closurepack.errors import OptionError
from closurepack.options import parse_command, parse_created, parse_key_values, parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [("500M", 500 << 20), ("20g", 20 << 30), ("1.5TiB", 3 << 39), ("123", 123), ("none", None)],
)
def test_sizes(value: str, expected: int | None) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["inf", "nan", "1e400G", "-1M", "lots", ""])
def test_bad_sizes_are_one_line_option_errors(value: str) -> None:
    with pytest.raises(OptionError, match=r"^--cache-max-size ") as info:
        parse_size(value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("1700000000", 1700000000), ("1970-01-01T00:00:05Z", 5), ("1970-01-02", 86400)],
)
def test_created(value: str, expected: int) -> None:
    assert parse_created(value) == expected


@pytest.mark.parametrize("value", ["--5", "-5", "\u00b2", "yesterday", "10000-01-01", "1e3"])
def test_bad_created_values_are_option_errors(value: str) -> None:
    with pytest.raises(OptionError, match=r"^--created "):
        parse_created(value)


def test_commands_and_key_values() -> None:
    assert parse_command('["/bin/app", "-v"]', option="--entrypoint") == ("/bin/app", "-v")
    assert parse_command("/bin/app 'a b'", option="--cmd") == ("/bin/app", "a b")
    assert parse_command(None, option="--cmd") is None
    with pytest.raises(OptionError, match="JSON array of strings"):
        parse_command("[1]", option="--cmd")
    with pytest.raises(OptionError, match="invalid JSON array"):
        parse_command("[" * 100_000, option="--cmd")
    assert parse_key_values(["A=1", "B=x=y"], option="--env") == (("A", "1"), ("B", "x=y"))
    with pytest.raises(OptionError, match="expected KEY=VALUE"):
        parse_key_values(["=1"], option="--env")
