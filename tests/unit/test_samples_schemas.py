"""A sample's JSON is read and written strictly, and a network's schema says what is wrong with one."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radio import samples
from radio.schemas import Schema


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v": NaN}',
        b'{"v": Infinity}',
        b'{"v": -Infinity}',
        b'{"v": 1e999}',
        b'{"v": -1e999}',
        b'{"v": ' + b"1" * 400 + b".5}",  # too large for a float without an exponent
        b'{"v": ' + b"9" * 250 + b'e99, "s": "x"}',  # a small exponent on a long number
        b'{"v": ' + b"1" * 5_000 + b"}",  # past Python's 4,300 digits
        b'{"v": "\\ud800"}',  # a lone surrogate names no character
        b'{"v": "\xff"}',  # not UTF-8
        b'{"v": 1',
        b"",
        b'{"v": 1} {"w": 2}',
    ],
    ids=[
        "nan",
        "inf",
        "-inf",
        "1e999",
        "-1e999",
        "400-digit-float",
        "250-digits-e99",
        "5000-digits",
        "surrogate",
        "latin-1",
        "cut",
        "empty",
        "two",
    ],
)
def test_what_no_other_reader_could_parse_back_is_refused(payload):
    with pytest.raises(samples.NotJSON, match="not JSON"):
        samples.parse(payload)


@given(
    digits=st.text("0123456789", min_size=1, max_size=400),
    fraction=st.text("0123456789", max_size=20),
    exponent=st.none() | st.integers(-400, 400),
    sign=st.sampled_from(["", "-"]),
)
def test_a_number_is_refused_exactly_when_no_float_holds_it(digits, fraction, exponent, sign):
    """However a number is written (long, with or without a point or an exponent, inside text
    or not), it is read as Python reads it unless no float holds it: then it is refused."""
    digits = digits.lstrip("0") or "0"
    literal = (
        sign
        + digits
        + (f".{fraction}" if fraction else "")
        + (f"e{exponent}" if exponent is not None else "")
    )
    is_float = bool(fraction) or exponent is not None
    payload = f'{{"v": {literal}, "s": "e1"}}'.encode()
    if is_float and math.isinf(float(literal)):
        with pytest.raises(samples.NotJSON, match="does not fit a float"):
            samples.parse(payload)
    else:
        assert samples.parse(payload) == json.loads(payload)


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_nesting_past_the_interpreter_s_depth_is_refused_in_one_line(opener):
    with pytest.raises(samples.NotJSON, match="nested too deep"):
        samples.parse(opener * 100_000)


@pytest.mark.parametrize(
    ("payload", "data"),
    [
        (b'{"t": 1.5e300, "n": -0, "s": "\\u00e9\\ud83d\\ude00", "l": [true, null]}', None),
        (b"[1, 2]", [1, 2]),  # JSON, though not a sample: the gate asks for an object
        (b'"text"', "text"),
        (b'{"big": ' + b"9" * 4_000 + b"}", None),
    ],
    ids=["object", "array", "string", "4000-digits"],
)
def test_strict_json_is_read_as_python_reads_it(payload, data):
    assert samples.parse(payload) == (json.loads(payload) if data is None else data)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"v": float("nan")}, "not JSON"),
        ({"v": float("inf")}, "not JSON"),
        ({"v": "\ud800"}, "not JSON"),
    ],
    ids=["nan", "inf", "surrogate"],
)
def test_what_cannot_be_strict_json_is_never_written(data, why):
    with pytest.raises(samples.NotJSON, match=why):
        samples.encode(data)


def test_a_deep_sample_is_never_written():
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(samples.NotJSON, match="nested too deep"):
        samples.encode(deep)


def test_what_is_written_reads_back_the_same():
    data = {"é": "😀", "n": [1, 2.5, None, True], "big": 10**100}
    assert samples.parse(samples.encode(data)) == data


def schema_file(tmp_path, document: object):
    path = tmp_path / "schema.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


SPEED = {
    "type": "object",
    "required": ["speed"],
    "properties": {
        "speed": {"type": "number", "minimum": 0, "default": 5},
        "where": {"$ref": "#/$defs/place"},
    },
    "$defs": {"place": {"type": "object", "properties": {"lat": {"type": "number", "maximum": 90}}}},
}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"speed": 3}, None),
        ({"speed": -3}, "speed: -3 must be bigger than or equal to 0"),
        ({}, "the sample: {} must contain ['speed'] properties"),
        ({"speed": "fast"}, 'speed: "fast" must be number'),
        ({"speed": 1, "where": {"lat": 91}}, "where.lat: 91 must be smaller than or equal to 90"),
        ({"speed": "x" * 50}, "speed: the value must be number"),
    ],
    ids=["matches", "minimum", "required", "type", "inside-a-reference", "long-value"],
)
def test_a_schema_names_the_field_its_value_and_the_rule(tmp_path, data, problem):
    assert Schema.load(schema_file(tmp_path, SPEED)).problem(data) == problem


def test_a_schema_never_fills_in_defaults(tmp_path):
    sample: dict[str, object] = {"speed": 1, "where": {}}
    assert Schema.load(schema_file(tmp_path, SPEED)).problem(sample) is None
    assert sample == {"speed": 1, "where": {}}
    empty: dict[str, object] = {}
    schema = Schema.load(schema_file(tmp_path, {"properties": {"speed": {"default": 5}}}))
    assert schema.problem(empty) is None
    assert empty == {}


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ({"type": "no-such-type"}, "is not a valid JSON Schema"),
        ({"$ref": "https://example.com/schema.json"}, "only references inside the file are followed"),
        (
            {"properties": {"a": {"$ref": "file:///etc/passwd"}}},
            "only references inside the file are followed",
        ),
    ],
    ids=["not-json", "not-an-object", "invalid", "remote-ref", "file-ref"],
)
def test_a_bad_schema_file_is_one_error_naming_it(tmp_path, document, error):
    path = schema_file(tmp_path, document)
    with pytest.raises(ValueError, match=error) as raised:
        Schema.load(path)
    assert str(path) in str(raised.value)


def test_a_missing_schema_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Schema.load(tmp_path / "absent.json")


def verdict(read, payload: bytes) -> object:
    """What a reading of the payload decides: a JSON object or not, or refused and why."""
    try:
        return read(payload)
    except samples.NotJSON as exc:
        return str(exc)


def parse_verdict(payload: bytes) -> object:
    return verdict(lambda p: isinstance(samples.parse(p), dict), payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"t": 1.5, "seq": 7, "pad": "xxx"}',
        b" [1, 2] ",
        b'{"big": ' + b"9" * 400 + b"}",  # an integer no float holds: read, as parse reads it
        b'{"v": 1e999}',
        b'{"v": NaN}',
        b'{"v": "\\ud800"}',
        b'{"v": "\xff"}',
        b'{"v": 1} x',
        b"[" * 1_000 + b"]" * 1_000,  # deeper than parse reads, within what orjson does
        b'{"a":' * 1_000 + b"1" + b"}" * 1_000,
        b"[" * 400 + b"]" * 400,
    ],
    ids=[
        "object",
        "array",
        "400-digit-int",
        "1e999",
        "nan",
        "surrogate",
        "latin-1",
        "extra",
        "1000-deep",
        "1000-deep-objects",
        "400-deep",
    ],
)
def test_is_object_is_parse_s_verdict_in_parse_s_words(payload):
    assert verdict(samples.is_object, payload) == parse_verdict(payload)


_JSON_BITS = st.sampled_from(
    ['{"a": ', "[", "]", "}", ",", ":", '"', "\\u", "d800", "dc00", "e", "E", "-", "+", ".", "0", "9" * 30,
     "1e309", "true", "NaN", "Infinity", "null", " ", "\t", "\f", "\xa0", "\x00", "\ud83d\ude00", "\\"]
)  # fmt: skip


@given(
    value=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
        max_leaves=20,
    ),
    cut=st.integers(0, 200),
    bit=_JSON_BITS,
    raw=st.booleans(),
)
def test_is_object_agrees_with_parse_on_json_and_near_misses(value, cut, bit, raw):
    """Valid JSON, and JSON with one piece put in somewhere: the two readings never disagree."""
    text = json.dumps(value, ensure_ascii=raw)
    at = cut % (len(text) + 1)
    for payload in (text.encode(), (text[:at] + bit + text[at:]).encode("utf-8", "surrogatepass")):
        assert verdict(samples.is_object, payload) == parse_verdict(payload)
