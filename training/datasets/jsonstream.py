"""Big JSON files read one element at a time, with the standard library only.

Public region-text datasets ship as single JSON documents of gigabytes (Visual Genome's region_descriptions.json is
a list with one element per image; COCO-format files are an object whose "images" and "annotations" are long
lists). `iter_array(path)` yields the elements of a top-level list, and `iter_array(path, key)` those of the list
under one key of a top-level object, holding one element (plus a read chunk) in memory at a time. Other keys of the
object are skipped by scanning brackets and strings, never decoded.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from regionscribe.training.datasets.records import FormatError

CHUNK = 1 << 20
_WS = " \t\r\n"
_SPECIAL = re.compile(r'["\\\[\]{}]')
_IN_STRING = re.compile(r'["\\]')
_DECODER = json.JSONDecoder()


class _Cursor:
    """A text buffer over a file that refills on demand; `pos` indexes `buf`."""

    def __init__(self, f, path: Path):
        self.f, self.path, self.buf, self.pos, self.eof = f, path, "", 0, False
        self.dropped = 0  # characters dropped from the front of buf

    def more(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        if self.pos:  # drop what was consumed
            self.dropped += self.pos
            self.buf, self.pos = self.buf[self.pos:], 0
        self.buf += chunk
        return True

    def peek(self) -> str:
        """The next non-blank character ("" at the end of the file), without consuming it."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def expect(self, chars: str, what: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise FormatError(self.path, f"{what} (found {c!r} at character {self.offset()})")
        self.pos += 1
        return c

    def offset(self) -> int:
        return self.dropped + self.pos

    def value(self) -> Any:
        """Decode the next JSON value. A value is accepted only once a character follows it in the buffer (or the
        file ended), so a number or object cut by the chunk boundary is never taken for a whole one."""
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self.more():
                    continue
                raise FormatError(self.path, f"invalid JSON: {exc.msg} at character {self.offset()}") from None
            if end < len(self.buf) or not self.more():
                self.pos = end
                return obj

    def skip(self) -> None:
        """Skip the next value without decoding it."""
        c = self.peek()
        if c not in "[{\"":
            self.value()
            return
        depth, in_string = 0, False
        while True:
            if in_string:
                m = _IN_STRING.search(self.buf, self.pos)
                if m is None:
                    self.pos = len(self.buf)
                elif m.group() == "\\":
                    if m.end() < len(self.buf):
                        self.pos = m.end() + 1
                        continue
                    self.pos = m.start()  # refill, then read the escape whole
                else:
                    self.pos = m.end()
                    in_string = False
                    if depth == 0:
                        return
                    continue
            else:
                m = _SPECIAL.search(self.buf, self.pos)
                if m is not None:
                    self.pos = m.end()
                    ch = m.group()
                    if ch == '"':
                        in_string = True
                    elif ch in "[{":
                        depth += 1
                    elif ch in "]}":
                        depth -= 1
                        if depth == 0:
                            return
                    continue
                self.pos = len(self.buf)
            if not self.more():
                raise FormatError(self.path, "the file ends inside a JSON value")


def _elements(cur: _Cursor) -> Iterator[Any]:
    cur.expect("[", "expected a JSON list")
    if cur.peek() == "]":
        cur.pos += 1
        return
    while True:
        yield cur.value()
        if cur.expect(",]", "expected ',' or ']' between list elements") == "]":
            return


def iter_array(path: str | Path, key: str | None = None) -> Iterator[Any]:
    """The elements of the file's top-level list (key None), or of the list under top-level `key`. A missing key
    yields nothing; a value of the wrong type raises FormatError naming the file."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        cur = _Cursor(f, path)
        if key is None:
            if cur.peek() != "[":
                raise FormatError(path, "expected a JSON list at the top level")
            yield from _elements(cur)
            return
        cur.expect("{", f"expected a JSON object at the top level (with a {key!r} list)")
        if cur.peek() == "}":
            return
        while True:
            name = cur.value()
            cur.expect(":", "expected ':' after an object key")
            if name == key:
                if cur.peek() != "[":
                    raise FormatError(path, f"{key!r} is not a list")
                yield from _elements(cur)
                return
            cur.skip()
            if cur.expect(",}", "expected ',' or '}' between object members") == "}":
                return


def top_level_keys(path: str | Path) -> list[str]:
    """The keys of the file's top-level object, in order, without decoding their values ([] for a list)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        cur = _Cursor(f, path)
        if cur.peek() != "{":
            return []
        cur.pos += 1
        keys: list[str] = []
        if cur.peek() == "}":
            return keys
        while True:
            keys.append(cur.value())
            cur.expect(":", "expected ':' after an object key")
            cur.skip()
            if cur.expect(",}", "expected ',' or '}' between object members") == "}":
                return keys
