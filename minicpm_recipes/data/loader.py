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
Each item is `(line, record, raw)`: `line` is 1-based (None for parquet/arrow), `raw` the record's bytes where
the file has them (used for duplicate detection), `record` a `BadRecord` when the bytes are not valid JSON.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class BadRecord:
    """Bytes that are not a JSON value; `line` is where the error is."""

    line: int
    message: str


def file_type(path: str | os.PathLike) -> str | None:
    return FILEEXT2TYPE.get(os.path.splitext(str(path))[1][1:])


class RecordStream:
    """Iterate `(line, record, raw)`; `position` is how many bytes have been consumed (for progress bars)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.position = 0
        self.kind = file_type(path)
        self.size = self.path.stat().st_size

    def __iter__(self) -> Iterator[tuple[int | None, Any, bytes | None]]:
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
        loads = orjson.loads
        pos = 0
        for lineno, raw in enumerate(fh, 1):
            pos += len(raw)
            if lineno & 1023 == 0:
                self.position = pos
            if raw.isspace():
                continue
            try:
                rec = loads(raw)
            except orjson.JSONDecodeError as err:
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    try:
                        rec = loads(raw[3:])
                    except orjson.JSONDecodeError:
                        yield lineno, BadRecord(lineno, _json_msg(err)), raw
                        continue
                    yield lineno, rec, raw
                    continue
                yield lineno, BadRecord(lineno, _json_msg(err)), raw
                continue
            yield lineno, rec, raw
        self.position = pos

    def _json_array(self, fh):
        reader = _ArrayReader(fh)
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
                yield lineno, {"text": text}, raw
            self.position = pos

    def _csv(self):
        with open(self.path, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.DictReader(fh)
            line = reader.line_num + 1
            for row in reader:
                # datasets' csv loader (pandas) reads empty fields as missing values
                rec = {k: (v if v != "" else None) for k, v in row.items() if k is not None}
                yield line, rec, orjson.dumps(rec)
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
                yield None, rec, None
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
_UNPARSED = object()


class _ArrayReader:
    """Split a top-level JSON array into its elements without loading the file."""

    def __init__(self, fh: io.BufferedReader):
        self.fh = fh
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.eof = False
        self.consumed = 0
        self.literal: bytes | None = None

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.fh.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
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
        loads = orjson.loads
        self._fill()
        pos = self._skip_ws(0)
        if self.buf[pos:pos + 3] == b"\xef\xbb\xbf":
            pos = self._skip_ws(pos + 3)
        line = 1 + self.buf.count(b"\n", 0, pos)
        pos += 1  # '['
        pos = self._skip_ws(pos)
        if pos < len(self.buf) and self.buf[pos:pos + 1] == b"]":
            return
        while True:
            # pos: start of a record; line: its line
            if pos >= len(self.buf):
                yield line, BadRecord(line, "invalid JSON: unexpected end of file inside the array"), None
                return
            end, nxt, rec = self._find_end(pos)
            buf = self.buf
            if end is None:
                yield line, BadRecord(line, "invalid JSON: unterminated value (missing ']' or '}'?)"), None
                return
            raw = buf[pos:end]
            if rec is _UNPARSED:
                try:
                    rec = loads(raw)
                except orjson.JSONDecodeError as err:
                    err_line = line + raw.count(b"\n", 0, getattr(err, "pos", 0) or 0)
                    rec = BadRecord(err_line, _json_msg(err))
            yield line, rec, raw
            if nxt is None:  # the closing ']'
                return
            line += buf.count(b"\n", pos, nxt)
            pos = nxt
            if pos > (CHUNK << 1):
                self.buf = buf[pos:]
                self.base += pos
                pos = 0
            self.consumed = self.base + pos

    def _find_end(self, pos: int) -> tuple[int | None, int | None, Any]:
        """(end of the record at pos, start of the next record or None after the last one, the parsed record
        or _UNPARSED)."""
        buf = self.buf
        lit = self.literal
        if lit is None or not buf.startswith(lit, pos):
            m = _OPEN_RECORD.match(buf, pos)
            lit = self.literal = m.group(0) if m else None
        if lit is not None:
            q = buf.find(lit, pos + 1)
            while q == -1 and self._fill():
                buf = self.buf
                q = buf.find(lit, pos + 1)
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
                        try:
                            rec = orjson.loads(buf[pos:k + 1])
                        except orjson.JSONDecodeError:
                            pass
                        else:
                            return k + 1, q, rec
        return (*self._scan(pos), _UNPARSED)

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
