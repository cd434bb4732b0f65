"""Stream records out of the file types LLaMA-Factory loads, each with the line it starts on.

Nothing reads a whole file into memory:
- JSON lines: one record a line.
- JSON arrays: records are cut out of a sliding buffer and parsed one by one with orjson. Cut points are found
  fast with the bytes that open every record (e.g. `{"messages"` or `{\\n    "messages"`) and proved exact by
  orjson itself: a slice that starts at a record boundary parses as one value only if it ends at the next
  one. When a guess fails (the text occurs inside a string, records open differently) a bracket/string scanner
  finds the exact end of that one record.
- parquet and arrow via pyarrow (row batches), csv via the csv module, txt one record `{"text": line}` a line
  (what `datasets`' text loader gives).
Each item is `(line, record, raw, shape)`: `line` is 1-based (None for parquet/arrow), `raw` the record's bytes
where the file has them (duplicate detection), `record` LAZY for JSON (parse `raw`), `shape` see ShapeMask.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

# LLaMA-Factory's llamafactory.extras.constants.FILEEXT2TYPE
FILEEXT2TYPE = {"arrow": "arrow", "csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet", "txt": "text"}

CHUNK = 8 << 20


LAZY = object()  # a JSON record not parsed yet: parse `raw`


@dataclass(frozen=True)
class BadRecord:
    """Bytes that are not a JSON value; `line` is where the error is."""

    line: int
    message: str


def file_type(path: str | os.PathLike) -> str | None:
    return FILEEXT2TYPE.get(os.path.splitext(str(path))[1][1:])


_AMBIGUOUS_FIRST = frozenset([*range(0x21), 0x5C, 0xC2, 0xE1, 0xE2, 0xE3])  # may start whitespace / escapes
_NOT_CONTROL = bytes(range(0x20, 0x100))
_BAD_ESCAPE = re.compile(rb'\\(?:[^"\\/bfnrtu]|u(?![0-9a-fA-F]{4})|u[dD][89a-fA-F])')


class ShapeMask:
    """The *shape* of a raw JSON record: its bytes outside strings verbatim, its strings verbatim, except long
    ones, which are masked. Records of one shape get the same findings (the shape cache in validate.py).

    A string is masked only when it is at least `min_len` bytes long (longer than every column and tag name,
    so never a key or role the checks compare) and starts with a byte that certainly begins a non-whitespace
    character (so it is neither empty nor whitespace-only). No shape (None) for records where splitting at
    quotes could mislead: an escaped quote, a raw control character or an invalid/surrogate escape inside
    strings. Invalid UTF-8 is ruled out per block by the reader. So two records with one shape have the same
    keys, types, array lengths, numbers, booleans, nulls, short strings, non-blank long strings, and are both
    valid JSON or both not.
    """

    def __init__(self, min_len: int):
        self.min_len = min_len

    def __call__(self, raw: bytes):
        if b'\\"' in raw:
            return None
        parts = raw.split(b'"')
        if not len(parts) & 1:
            return None
        strings = parts[1::2]
        inner = b'"'.join(strings)
        if inner.translate(None, _NOT_CONTROL) or (b"\\" in inner and _BAD_ESCAPE.search(inner)):
            return None
        k = self.min_len
        amb = _AMBIGUOUS_FIRST
        return b'"'.join(parts[0::2]), tuple([s if len(s) < k or s[0] in amb else None for s in strings])


def line_blocks(fh, chunk: int):
    """Whole lines of a binary file, about `chunk` bytes at a time: (file offset of `data`, `data`), `data`
    without its last newline. A UTF-8 byte order mark at the start of the file is dropped."""
    rest = b""
    pos = 0  # file offset of the next block
    first = True
    while True:
        piece = fh.read(chunk)
        if piece:
            data = rest + piece
            cut = data.rfind(b"\n")
            if cut == -1:
                rest = data
                continue
            rest = data[cut + 1:]
            data = data[:cut]
        else:
            data, rest = rest, b""
            if not data:
                return
        start = pos
        pos += len(data) + 1
        if first and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
            start += 3
        first = False
        yield start, data
        if not piece:
            return


def _utf8_ok(decoder, data: bytes, final: bool = False) -> bool:
    if data.isascii():
        return True
    try:
        decoder.decode(data, final)
    except UnicodeDecodeError:
        return False
    return True


class RecordStream:
    """Iterate `(line, record, raw, shape)`; `position` is how many bytes have been consumed (progress bars).

    JSON files yield `record` = LAZY (the caller parses `raw` with orjson, unless `shape` is a known clean
    shape) and `shape` = the masked bytes when a `mask` is given; other file types yield parsed records and
    shape None.
    """

    def __init__(self, path: str | os.PathLike, mask: ShapeMask | None = None, clean: set | None = None):
        self.path = Path(path)
        self.position = 0
        self.kind = file_type(path)
        self.size = self.path.stat().st_size
        self.mask = mask
        self.clean = clean if clean is not None else set()

    def __iter__(self) -> Iterator[tuple[int | None, Any, bytes | None, bytes | None]]:
        if self.kind == "json":
            return self._json()
        if self.kind == "text":
            return self._text()
        if self.kind == "csv":
            return self._csv()
        if self.kind in ("parquet", "arrow"):
            return self._arrow()
        raise ValueError(f"unsupported file type {self.path.suffix!r}")

    # ---- JSON (array or lines) -------------------------------------------------------------------
    def _json(self):
        with open(self.path, "rb") as fh:
            head = fh.read(4096)
            stripped = head.lstrip()
            if stripped.startswith(b"\xef\xbb\xbf"):
                stripped = stripped[3:].lstrip()
            fh.seek(0)
            if stripped.startswith(b"["):
                yield from self._json_array(fh)
            else:
                yield from self._json_lines(fh)

    def _json_lines(self, fh):
        mask = self.mask
        decoder = codecs.getincrementaldecoder("utf-8")()
        lineno = 0
        for start, data in line_blocks(fh, CHUNK):
            use_shapes = mask is not None and _utf8_ok(decoder, data + b"\n")
            for raw in data.split(b"\n"):
                lineno += 1
                if not raw or raw.isspace():
                    continue
                yield lineno, LAZY, raw, (mask(raw) if use_shapes else None)
            self.position = min(start + len(data) + 1, self.size)
        self.position = self.size

    def _json_array(self, fh):
        reader = _ArrayReader(fh, self.mask, self.clean)
        for item in reader:
            self.position = reader.consumed
            yield item
        self.position = self.size

    # ---- other file types -------------------------------------------------------------------------
    def _text(self):
        with open(self.path, "rb") as fh:
            pos = 0
            for lineno, raw in enumerate(fh, 1):
                pos += len(raw)
                if lineno & 1023 == 0:
                    self.position = pos
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                yield lineno, {"text": text}, raw, None
            self.position = pos

    def _csv(self):
        with open(self.path, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.DictReader(fh)
            line = reader.line_num + 1
            for row in reader:
                # datasets' csv loader (pandas) reads empty fields as missing values
                rec = {k: (v if v != "" else None) for k, v in row.items() if k is not None}
                yield line, rec, orjson.dumps(rec), None
                line = reader.line_num + 1
            self.position = self.size

    def _arrow(self):
        import pyarrow as pa

        if self.kind == "parquet":
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(self.path).iter_batches(batch_size=2048)
        else:
            with open(self.path, "rb") as probe:
                magic = probe.read(6)
            source = pa.memory_map(str(self.path))
            reader = pa.ipc.open_file(source) if magic == b"ARROW1" else pa.ipc.open_stream(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches)) \
                if magic == b"ARROW1" else iter(reader)
        done = 0
        for batch in batches:
            for rec in batch.to_pylist():
                yield None, rec, None, None
            done += batch.nbytes
            self.position = min(done, self.size)
        self.position = self.size


def _json_msg(err: orjson.JSONDecodeError) -> str:
    return f"invalid JSON: {err.msg}"


_OPEN_RECORD = re.compile(rb'\{\s*"(?:[^"\\]|\\.){0,200}"')
_STRUCT = re.compile(rb'["\[\]{}]')
_STRING_REST = re.compile(rb'(?:[^"\\]|\\.)*"', re.S)
_WS = b" \t\r\n"
_SCALAR_END = re.compile(rb"[,\]]")
_MAX_LITERALS = 4


class _ArrayReader:
    """Split a top-level JSON array into its elements without loading the file."""

    def __init__(self, fh: io.BufferedReader, mask: ShapeMask | None = None, clean: set | None = None):
        self.fh = fh
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.eof = False
        self.consumed = 0
        self.literals: tuple[bytes, ...] = ()
        self.mask = mask
        self.clean = clean if clean is not None else set()
        self.decoder = codecs.getincrementaldecoder("utf-8")()

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.fh.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        if self.mask is not None and not _utf8_ok(self.decoder, chunk):
            self.mask = None  # shapes could lie about these bytes: parse every record from here on
        self.buf += chunk
        return True

    def _skip_ws(self, pos: int) -> int:
        buf = self.buf
        while True:
            n = len(buf)
            while pos < n and buf[pos] in _WS:
                pos += 1
            if pos < n or not self._fill():
                return pos
            buf = self.buf

    def __iter__(self):
        self._fill()
        pos = self._skip_ws(0)
        if self.buf[pos:pos + 3] == b"\xef\xbb\xbf":
            pos = self._skip_ws(pos + 3)
        pos = self._skip_ws(pos + 1)  # past '['
        line = 1 + self.buf.count(b"\n", 0, pos)
        if pos < len(self.buf) and self.buf[pos:pos + 1] == b"]":
            return
        yield from self._records(pos, line)

    def resume(self, line: int):
        """Records from the file handle's position on, which is the start of a record (not the array's '[')
        on line `line`: what __iter__ yields from that record on."""
        self.base = self.fh.tell()
        self._fill()
        yield from self._records(self._skip_ws(0), line)

    def _records(self, pos: int, line: int):
        loads = orjson.loads
        while True:
            # pos: start of a record; line: its line
            if pos >= len(self.buf):
                yield line, BadRecord(line, "invalid JSON: unexpected end of file inside the array"), None, None
                return
            end, nxt, rec, raw, shape = self._find_end(pos)
            buf = self.buf
            if end is None:
                yield line, BadRecord(line, "invalid JSON: unterminated value (missing ']' or '}'?)"), None, None
                return
            if rec is LAZY and shape is None:
                try:
                    rec = loads(raw)
                except orjson.JSONDecodeError as err:
                    err_line = line + raw.count(b"\n", 0, getattr(err, "pos", 0) or 0)
                    rec = BadRecord(err_line, _json_msg(err))
            yield line, rec, raw, shape
            if nxt is None:  # the closing ']'
                return
            line += buf.count(b"\n", pos, nxt)
            pos = nxt
            if pos > (CHUNK << 1):
                self.buf = buf[pos:]
                self.base += pos
                pos = 0
            self.consumed = self.base + pos

    def _find_end(self, pos: int):
        """(end of the record at pos, start of the next record or None after the last one, the record (LAZY:
        not parsed; it is when its shape is None), its raw bytes, its shape or None).

        A cut point guessed from the record-opening literal is proved by orjson parsing the slice as one value,
        or by the slice's shape being one already seen for a single valid record."""
        buf = self.buf
        lits = self.literals
        if not (lits and buf.startswith(lits, pos)):
            m = _OPEN_RECORD.match(buf, pos)
            if m:
                lits = self.literals = (m.group(0), *lits)[:_MAX_LITERALS]
        if lits:
            q = self._next_opening(pos, lits)
            buf = self.buf
            if q != -1:
                # candidate: '}' ws ',' ws <literal>
                j = q - 1
                while j > pos and buf[j] in _WS:
                    j -= 1
                if buf[j] == 0x2C:  # ','
                    k = j - 1
                    while k > pos and buf[k] in _WS:
                        k -= 1
                    if buf[k] == 0x7D:  # '}'
                        raw = buf[pos:k + 1]
                        mask = self.mask
                        if mask is not None:
                            shape = mask(raw)
                            if shape in self.clean:
                                return k + 1, q, LAZY, raw, shape
                        else:
                            shape = None
                        try:
                            rec = orjson.loads(raw)
                        except orjson.JSONDecodeError:
                            pass
                        else:
                            return k + 1, q, rec, raw, shape
        end, nxt = self._scan(pos)
        if end is None:
            return None, None, None, None, None
        raw = self.buf[pos:end]
        return end, nxt, LAZY, raw, None

    def _next_opening(self, pos: int, lits: tuple[bytes, ...]) -> int:
        """The nearest occurrence of a record-opening literal after pos, looking ahead a bounded window
        (records that open differently must not pull the file into memory)."""
        window = 1 << 16
        while True:
            buf = self.buf
            stop = pos + 1 + window
            if len(lits) == 1:
                q = buf.find(lits[0], pos + 1, stop)
                if q != -1:
                    return q
            else:
                found = [q for q in (buf.find(lit, pos + 1, stop) for lit in lits) if q != -1]
                if found:
                    return min(found)
            if stop < len(buf):
                if window >= (CHUNK << 1):
                    return -1
                window <<= 2
            elif len(buf) - pos >= (CHUNK << 2) or not self._fill():
                return -1

    def _scan(self, pos: int) -> tuple[int | None, int | None]:
        """Exact: walk strings and brackets from pos to the end of the value, then past ',' or ']'."""
        depth = 0
        i = pos
        while True:
            buf = self.buf
            first = buf[i:i + 1]
            if depth == 0 and first and first not in b'{["':
                # a scalar: up to the next ',' or ']' at top level
                m = _SCALAR_END.search(buf, i)
                if m is None:
                    if self._fill():
                        continue
                    return None, None
                end = m.start()
                while end > pos and buf[end - 1] in _WS:
                    end -= 1
                return self._after(pos, end)
            m = _STRUCT.search(buf, i)
            if m is None:
                if self._fill():
                    continue
                return None, None
            c = buf[m.start()]
            if c == 0x22:  # '"'
                s = _STRING_REST.match(buf, m.end())
                if s is None:
                    if self._fill():
                        continue
                    return None, None
                i = s.end()
                if depth == 0:
                    return self._after(pos, i)
                continue
            i = m.end()
            if c in b"[{":
                depth += 1
            else:
                depth -= 1
                if depth <= 0:
                    return self._after(pos, i)

    def _after(self, pos: int, end: int) -> tuple[int | None, int | None]:
        j = self._skip_ws(end)
        buf = self.buf
        if j >= len(buf):
            return end, None
        c = buf[j:j + 1]
        if c == b",":
            return end, self._skip_ws(j + 1)
        if c == b"]":
            return end, None
        return end, j  # garbage between records: next parse reports it
