"""radio/toml_values.py: one wording for a wrong value, in radio.toml and keys.toml alike."""

from __future__ import annotations

import pytest

from radio.toml_values import kind, shown


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, "the integer 7"),
        (False, "the boolean false"),  # as TOML spells it, not Python
        (1.5, "the number 1.5"),
        ("yes", "the string 'yes'"),
        (["a"], "the array ['a']"),
        ({"a": 1}, "the table {'a': 1}"),
        ("x" * 41, "a string"),  # too long for one line: the type alone
        (list(range(30)), "an array"),
        ({str(n): n for n in range(20)}, "a table"),
    ],
)
def test_a_wrong_value_is_shown_with_its_toml_type(value, expected):
    assert shown(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, "an integer"),
        ("s", "a string"),
        ([], "an array"),
        ({}, "a table"),
        (True, "a boolean"),
        (0.5, "a number"),
    ],
)
def test_kind_names_the_type_with_its_article(value, expected):
    assert kind(value) == expected
