"""``LIKE`` / ``ILIKE`` matching in linear time, deciding exactly as Postgres does.

Layer: ``shapes`` (pure).

Theory of operation
-------------------
A pattern is compiled once (:func:`compile_pattern`) into *segments*: the pieces between
unescaped ``%`` signs. A segment is a fixed-length sequence of literal characters and ``_``
wildcards. A pattern without ``%`` is one segment that must cover the whole text. Otherwise the
first segment must match at the start, the last at the end, and the ones in between anywhere in
order, without overlapping. Taking each middle segment at its *leftmost* possible place is
always right: any match that places it further right can be moved left without breaking the
others, so the greedy scan decides exactly what Postgres's backtracking ``MatchText`` decides.

Finding a segment's leftmost place never backtracks:

* leading and trailing ``_`` of a segment only skip characters, so they are taken off;
* a segment that is then pure literal text is found with ``str.find`` (linear);
* a segment with ``_`` inside is found with bit masks: for every literal character ``c`` of the
  segment, one big integer has bit ``j`` set where ``text[j] == c`` (built with C-speed string
  operations), and the segment's possible start positions are the AND of those masks, each
  shifted by the character's offset. That is ``O(len(segment) * len(text) / 64)`` machine-word
  operations, once per segment.

Every scan starts where the previous segment ended, so a whole match costs a bounded number of
linear passes over the text. Nothing here is exponential or quadratic in the text.

Postgres compares ``ILIKE`` after ``lower()`` of both sides; with the ``C`` collation that syncd
assumes, ``lower()`` changes only ASCII letters, and so does :func:`fold_case` here.

A pattern that ends with an escape character is an error in Postgres only when the matcher
reaches that character; :meth:`LikePattern.match` raises exactly then (see ``_reaches_end``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from shapes.errors import EvaluationError

_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_UPPER: Final = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ANY: Final = None  # a ``_`` inside a segment
_MASK_ALPHABET: Final = 250  # distinct characters per bit-mask pass (bytes 1..250)
_CACHED_PATTERN_CHARS: Final = 1024

Item = str | None
"""One position of a segment: a literal character, or None for ``_``."""


def fold_case(text: str) -> str:
    """``lower()`` under the ``C`` collation: ASCII letters only.

    The last text folded is remembered: one row's value is folded for many shapes in a row
    (one tuple, replaced whole, so threads cannot see half of it)."""
    global _last_folded
    last = _last_folded
    if last[0] is text:
        return last[1]
    folded = text.translate(_ASCII_LOWER)
    _last_folded = (text, folded)
    return folded


_last_folded: tuple[str, str] = ("", "")


def upper_case(text: str) -> str:
    """``upper()`` under the ``C`` collation: ASCII letters only."""
    return text.translate(_ASCII_UPPER)


@dataclass(frozen=True, slots=True)
class _Segment:
    """A ``%``-free piece: ``skip`` leading ``_``, the ``core``, ``tail`` trailing ``_``."""

    skip: int
    core: tuple[Item, ...]
    tail: int
    literal: str | None  # the core as a string when it has no ``_``

    @property
    def width(self) -> int:
        return self.skip + len(self.core) + self.tail


def _segment(items: list[Item]) -> _Segment:
    start = 0
    while start < len(items) and items[start] is _ANY:
        start += 1
    end = len(items)
    while end > start and items[end - 1] is _ANY:
        end -= 1
    core = tuple(items[start:end])
    literal = None if any(item is _ANY for item in core) else "".join(core)  # type: ignore[arg-type]
    return _Segment(start, core, len(items) - end, literal)


@dataclass(frozen=True, slots=True)
class LikePattern:
    """A compiled pattern: ``segments`` split at ``%`` (one segment: no ``%`` at all)."""

    segments: tuple[_Segment, ...]
    ignore_case: bool
    dangling_escape: bool  # the pattern ends with a lone escape character
    error_probe: LikePattern | None  # matches exactly the texts on which Postgres raises
    fast: Callable[[str], bool] | None = None  # the same decision for the common shapes

    def match(self, text: str) -> bool:
        """Whether ``text`` matches; raises :class:`EvaluationError` where Postgres does."""
        if self.ignore_case:
            text = fold_case(text)
        if self.fast is not None:
            return self.fast(text)
        if self.dangling_escape:
            if self.error_probe is not None and self.error_probe.match(text):
                raise EvaluationError(
                    "LIKE pattern must not end with escape character", "invalid_escape_sequence"
                )
            return False
        return _match_segments(self.segments, text)


def _fast_match(segments: tuple[_Segment, ...]) -> Callable[[str], bool] | None:
    """``text == a``, ``startswith``, ``endswith`` or ``in`` for a pattern of literal text
    without ``_`` (``a``, ``a%``, ``%a``, ``a%b``, ``%a%``); None for any other."""
    if any(segment.literal is None or segment.skip or segment.tail for segment in segments):
        return None
    literals = [segment.literal or "" for segment in segments]
    if len(literals) == 1:
        only = literals[0]
        return only.__eq__
    if len(literals) == 2:
        head, tail = literals
        if not tail:
            return lambda text: text.startswith(head)
        if not head:
            return lambda text: text.endswith(tail)
        width = len(head) + len(tail)
        return lambda text: len(text) >= width and text.startswith(head) and text.endswith(tail)
    if len(literals) == 3 and not literals[0] and not literals[2]:
        middle = literals[1]
        return lambda text: middle in text
    return None


def _match_segments(segments: tuple[_Segment, ...], text: str) -> bool:
    if len(segments) == 1:
        only = segments[0]
        return len(text) == only.width and _fits_at(only, text, 0, _Masks(text))
    first, *middle, last = segments
    if first.width + last.width > len(text):
        return False
    masks = _Masks(text)
    if not _fits_at(first, text, 0, masks):
        return False
    end = len(text) - last.width
    if not _fits_at(last, text, end, masks):
        return False
    position = first.width
    for segment in middle:
        found = _find(segment, text, position, end, masks)
        if found < 0:
            return False
        position = found + segment.width
    return True


def _fits_at(segment: _Segment, text: str, start: int, masks: _Masks) -> bool:
    """Whether ``segment`` matches ``text`` at exactly ``start`` (length already checked)."""
    begin = start + segment.skip
    if segment.literal is not None:
        return text.startswith(segment.literal, begin)
    return all(
        item is _ANY or text[begin + offset] == item for offset, item in enumerate(segment.core)
    )


def _find(segment: _Segment, text: str, start: int, limit: int, masks: _Masks) -> int:
    """Leftmost ``p >= start`` with the segment at ``p`` ending by ``limit``; -1 if none."""
    if start + segment.width > limit:
        return -1
    core_start, core_limit = start + segment.skip, limit - segment.tail
    if segment.literal is not None:
        found = text.find(segment.literal, core_start, core_limit)
        return -1 if found < 0 else found - segment.skip
    starts = masks.starts(segment.core) >> core_start
    last_start = core_limit - len(segment.core) - core_start
    starts &= (1 << (last_start + 1)) - 1
    if not starts:
        return -1
    return core_start + (starts & -starts).bit_length() - 1 - segment.skip


class _Masks:
    """Per-text bit masks of character positions, built on demand and cached."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.by_char: dict[str, int] = {}
        self.by_core: dict[tuple[Item, ...], int] = {}

    def starts(self, core: tuple[Item, ...]) -> int:
        """Bit ``p`` set iff every literal of ``core`` matches ``text`` at ``p + offset``."""
        cached = self.by_core.get(core)
        if cached is not None:
            return cached
        wanted = {item for item in core if item is not None}
        if any(char not in self.text for char in wanted):
            self.by_core[core] = 0
            return 0
        self._build(wanted)
        result = (1 << len(self.text)) - 1
        for offset, item in enumerate(core):
            if item is not None:
                result &= self.by_char[item] >> offset
                if not result:
                    break
        self.by_core[core] = result
        return result

    def _build(self, wanted: set[str]) -> None:
        missing = sorted(wanted - self.by_char.keys())
        for first in range(0, len(missing), _MASK_ALPHABET):
            self._build_group(missing[first : first + _MASK_ALPHABET])

    def _build_group(self, chars: list[str]) -> None:
        # Collapse the text to bytes: the i-th wanted character becomes byte i + 1, every other
        # character byte 0. Then one bytes.translate per character gives its 0/1 string.
        others = re.compile("[^" + "".join(re.escape(char) for char in chars) + "]")
        collapsed = others.sub("\x00", self.text)
        codes = {ord(char): chr(index + 1) for index, char in enumerate(chars)}
        data = collapsed.translate(codes).encode("latin-1")[::-1]
        for index, char in enumerate(chars):
            table = bytearray(b"0" * 256)
            table[index + 1] = ord("1")
            bits = data.translate(bytes(table))
            self.by_char[char] = int(bits, 2) if bits else 0


def _items(pattern: str, escape: str) -> tuple[list[list[Item]], bool]:
    """Split at unescaped ``%``; returns the segments' items and whether an escape dangles."""
    segments: list[list[Item]] = [[]]
    position = 0
    while position < len(pattern):
        char = pattern[position]
        position += 1
        if escape and char == escape:
            if position >= len(pattern):
                return segments, True
            segments[-1].append(pattern[position])
            position += 1
        elif char == "%":
            segments.append([])
        elif char == "_":
            segments[-1].append(_ANY)
        else:
            segments[-1].append(char)
    return segments, False


def _build(items: list[list[Item]], ignore_case: bool) -> tuple[_Segment, ...]:
    if ignore_case:
        items = [[None if item is None else fold_case(item) for item in part] for part in items]
    return tuple(_segment(part) for part in items)


def _error_probe(items: list[list[Item]], ignore_case: bool) -> LikePattern:
    """The texts on which Postgres's matcher reaches a dangling escape (see module docs).

    With the pattern ``P' + escape``: if ``P'`` ends with ``%`` (possibly mixed with ``_``), the
    error is raised once the part before the first ``%`` of that wildcard run has matched a
    prefix and at least ``max(1, k)`` characters remain, ``k`` being the run's ``_`` count after
    its first ``%``; otherwise once ``P'`` has matched a prefix with one character left over.
    Both are a LIKE pattern with a trailing ``%``.
    """
    parts = [list(part) for part in items]
    if len(parts) > 1 and all(item is _ANY for item in parts[-1]):
        first = len(parts) - 1  # the part after the first % of the trailing wildcard run
        while first > 1 and all(item is _ANY for item in parts[first - 1]):
            first -= 1
        after = sum(len(part) for part in parts[first:])
        head = parts[:first]
        head[-1] = head[-1] + [_ANY] * max(1, after)
    else:
        head = parts
        head[-1] = head[-1] + [_ANY]
    return LikePattern(_build([*head, []], ignore_case), ignore_case, False, None)


def compile_pattern(pattern: str, escape: str = "\\", ignore_case: bool = False) -> LikePattern:
    """Compile a LIKE pattern; ``escape`` is one character or ``""`` for none.

    Short patterns (constants, mostly) are cached; long ones, which can only come from row
    values, are not, so the cache's memory stays bounded.
    """
    if len(pattern) <= _CACHED_PATTERN_CHARS:
        return _compile_cached(pattern, escape, ignore_case)
    return _compile(pattern, escape, ignore_case)


@lru_cache(maxsize=4096)
def _compile_cached(pattern: str, escape: str, ignore_case: bool) -> LikePattern:
    return _compile(pattern, escape, ignore_case)


def _compile(pattern: str, escape: str, ignore_case: bool) -> LikePattern:
    items, dangling = _items(pattern, escape)
    if dangling:
        probe = _error_probe(items, ignore_case)
        return LikePattern((), ignore_case, True, probe)
    segments = _build(items, ignore_case)
    return LikePattern(segments, ignore_case, False, None, _fast_match(segments))


def like(text: str, pattern: str, escape: str = "\\", ignore_case: bool = False) -> bool:
    """``text LIKE pattern ESCAPE escape`` (``ILIKE`` with ``ignore_case``)."""
    return compile_pattern(pattern, escape, ignore_case).match(text)
