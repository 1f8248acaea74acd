"""Versions as properties: text round-trips, ordering is a total order matching the numbers,
and nothing but ASCII version text is accepted."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fleetbase.version import Version, VersionError

numbers = st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=4)
pre = st.lists(
    st.one_of(st.integers(0, 99).map(str), st.text("abcrc-", min_size=1, max_size=4)),
    max_size=3,
)
versions = st.builds(
    lambda core, p: ".".join(map(str, core)) + ("-" + ".".join(p) if p else ""), numbers, pre
)


def _core(v: str) -> tuple[int, ...]:
    parts = [int(x) for x in v.split("-", 1)[0].split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@given(versions)
def test_text_round_trips(text: str) -> None:
    """Every well-formed version parses and prints as written."""
    assert str(Version(text)) == text


@given(numbers, numbers)
def test_release_order_is_numeric_order(a: list[int], b: list[int]) -> None:
    """Plain releases compare as their numbers do (missing parts count as 0)."""
    va, vb = Version(".".join(map(str, a))), Version(".".join(map(str, b)))
    ka, kb = _core(str(va)), _core(str(vb))
    assert (va < vb) == (ka < kb) and (va == vb) == (ka == kb)
    if va == vb:
        assert hash(va) == hash(vb)


@given(versions, versions, versions)
def test_ordering_is_a_total_order(a: str, b: str, c: str) -> None:
    """Exactly one of <, ==, > holds, and < is transitive."""
    va, vb, vc = Version(a), Version(b), Version(c)
    assert [va < vb, va == vb, vb < va].count(True) == 1
    if va < vb and vb < vc:
        assert va < vc


@given(numbers, pre.filter(bool))
def test_prerelease_sorts_before_its_release(core: list[int], p: list[str]) -> None:
    """3.1.0-rc1 < 3.1.0."""
    release = ".".join(map(str, core))
    assert Version(release + "-" + ".".join(p)) < Version(release)


@given(versions, st.sampled_from(["\n", " ", "\t", "\r\n", "\x00"]))
def test_surrounding_whitespace_is_refused(text: str, junk: str) -> None:
    """'3.0.1\\n' is not a version (a '$' pattern let it through)."""
    with pytest.raises(VersionError):
        Version.parse(text + junk)


@given(versions, st.characters(categories=("Nd", "No"), exclude_characters="0123456789"))
@example("3.0.1", "\uff13")  # fullwidth 3
@example("1", "²")
def test_non_ascii_digits_are_refused(text: str, digit: str) -> None:
    """Fullwidth, superscript or other scripts' digits are never version parts."""
    with pytest.raises(VersionError):
        Version.parse(digit + text)
    with pytest.raises(VersionError):
        Version.parse(text + "." + digit)


@given(st.text(max_size=30))
def test_any_text_parses_or_raises_version_error(text: str) -> None:
    """No input raises anything but VersionError; what parses is printable ASCII."""
    try:
        v = Version.parse(text)
    except VersionError:
        return
    assert str(v).isascii() and str(v).isprintable() and str(v) == text
