"""Fast path for the common case, a valid JSON / JSON lines file: whole chunks decoded at once by msgspec.

The precise path (loader.RecordStream + checker.Checker, record by record) stays the one that reports. This
module only *accepts* chunks of records that certainly have no finding, and hands everything else to it:

- The msgspec types are derived from the filled JSON Schema of the dataset (schemas.filled_schema), for the
  keywords that map exactly or more strictly (type, properties, required, items, minItems); a schema using
  anything else gets no fast path. So a chunk that msgspec decodes into these types passes the schema.
- A chunk (about loader.CHUNK bytes of whole records) is accepted only when msgspec decodes it, every record's
  role sequence is one the checker's own rules accept (each distinct sequence is checked once, by running the
  checker's rules on it), every content is non-blank text, and no record duplicates another. Otherwise its
  records go one by one through the precise path (as raw bytes with their lines); a chunk that is not valid
  JSON, or whose cut could be wrong, hands the rest of the file to the precise reader.
- Accepted chunks update the run's duplicate hashes (the same `hash(raw bytes)` the precise path uses) and the
  set of columns seen, exactly as the precise path would.

Only sharegpt-formatted (role/content messages) sft data without a tools column or a cutoff_len estimate uses it
(the bulk of MiniCPM fine-tuning data); other layouts and stages go through the precise path unchanged.

Large files (PARALLEL_MIN_BYTES) are checked by forked worker processes, one chunk each, merged in file order
(fork keeps `hash()` equal in every process; MINICPM_VALIDATE_WORKERS sets their number, 0 = none). A worker that
does not answer within WORKER_TIMEOUT is given up and the remaining chunks are checked in this process.
"""

from __future__ import annotations

import codecs
import itertools
import multiprocessing
import os
import re
from array import array
from collections import deque
from collections.abc import Callable
from functools import partial
from itertools import chain
from operator import attrgetter
from typing import Annotated, Any, Literal

from .loader import _OPEN_RECORD, CHUNK, LAZY, RecordStream, _ArrayReader, _utf8_ok, line_blocks
from .spec import DatasetSpec

_BOM = b"\xef\xbb\xbf"
_WS = b" \t\r\n"
_MAX_BUF = CHUNK << 3  # a record longer than this: precise path
# the byte range of one worker's JSON lines block: small enough that its decoded records stay in the CPU caches
# and the two workers finish together (2 MB measured ~20% faster than 8 MB on 200 MB of JSON lines, 2 CPUs)
LINES_BLOCK = 2 << 20


class Unmappable(Exception):
    """A schema keyword the msgspec types cannot express exactly or more strictly."""


class FastChunk:
    """`n` consecutive records accepted as a whole: no finding; their hashes are in the run's duplicate state
    already; `dups` lists the duplicates among them as (offset in the chunk, line, hash)."""

    __slots__ = ("n", "dups")

    def __init__(self, n: int, dups: list[tuple[int, int, int]]):
        self.n = n
        self.dups = dups


_IGNORED = {"description", "title", "$id", "$schema", "$comment", "examples"}
_KNOWN = {"type", "properties", "required", "items", "minItems"}
_SCALARS = {"string": str, "boolean": bool, "integer": int, "number": float, "null": type(None)}


class _Types:
    """JSON Schema (draft-07 subset) -> msgspec types. Structs remember their JSON key -> attribute names."""

    def __init__(self, narrow: dict[tuple, Any] | None = None):
        import msgspec

        self.msgspec = msgspec
        self.narrow = narrow or {}  # path -> a stricter type for a string there (e.g. the roles a fast check allows)
        self.n = 0
        self.fields: dict[type, dict[str, str]] = {}
        self.required: dict[type, set[str]] = {}

    def node(self, schema: Any, path: tuple = ()) -> Any:
        if not isinstance(schema, dict):
            raise Unmappable(repr(schema))
        extra = set(schema) - _IGNORED - _KNOWN
        if extra:
            raise Unmappable(", ".join(sorted(extra)))
        types = schema.get("type")
        if types is None:
            raise Unmappable("no type")
        types = [types] if isinstance(types, str) else list(types)
        if "object" not in types and ("properties" in schema or "required" in schema):
            raise Unmappable("object keywords without type object")
        if "array" not in types and ("items" in schema or "minItems" in schema):
            raise Unmappable("array keywords without type array")
        alts = []
        for t in types:
            if t == "string" and path in self.narrow:
                alts.append(self.narrow[path])
            elif t in _SCALARS:
                alts.append(_SCALARS[t])
            elif t == "array":
                alts.append(self.array(schema, path))
            elif t == "object":
                alts.append(self.obj(schema, path))
            else:
                raise Unmappable(f"type {t!r}")
        out = alts[0]
        for a in alts[1:]:
            out = out | a
        return out

    def array(self, schema: dict, path: tuple) -> Any:
        items = schema.get("items")
        if items is None:
            inner = list
        elif isinstance(items, dict):
            inner = list[self.node(items, (*path, "[]"))]
        else:
            raise Unmappable("tuple items")
        k = schema.get("minItems")
        if k is not None:
            if not isinstance(k, int) or isinstance(k, bool):
                raise Unmappable("minItems")
            inner = Annotated[inner, self.msgspec.Meta(min_length=k)]
        return inner

    def obj(self, schema: dict, path: tuple) -> Any:
        msgspec = self.msgspec
        props = schema.get("properties")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise Unmappable("required")
        if props is None and not required:
            return dict
        props = dict(props or {})
        fields = []
        names: dict[str, str] = {}
        for i, key in enumerate(dict.fromkeys([*props, *required])):
            attr = f"f{i}"
            names[key] = attr
            typ = self.node(props[key], (*path, key)) if key in props else Any
            if key in required:
                fields.append((attr, typ, msgspec.field(name=key)))
            else:
                fields.append((attr, typ | msgspec.UnsetType, msgspec.field(default=msgspec.UNSET, name=key)))
        self.n += 1
        struct = msgspec.defstruct(f"Record{self.n}", fields, gc=False)
        self.fields[struct] = names
        self.required[struct] = set(required)
        return struct


class FastChecker:
    """msgspec decoders for a dataset's records plus the test that a decoded chunk has no finding."""

    def __init__(self, spec: DatasetSpec, rules: Callable[[Any], Any], record_type: type, types: _Types):
        import msgspec

        self.msgspec = msgspec
        self.errors = (msgspec.DecodeError, ValueError)  # ValidationError is a DecodeError; bad UTF-8 a ValueError
        self.one = msgspec.json.Decoder(record_type)
        self.many = msgspec.json.Decoder(list[record_type])
        self.raws = msgspec.json.Decoder(list[msgspec.Raw])
        self.rules = rules
        self.spec = spec
        cols, tags = spec.columns, spec.tags
        top = types.fields[record_type]
        required = types.required[record_type]
        self.optional_attrs = {col: attr for col, attr in top.items() if col not in required}
        self.required_columns = frozenset(required)
        self.msgs_of = attrgetter(top[cols["messages"]])
        msg_type = _list_item(record_type, top[cols["messages"]])
        names = types.fields[msg_type]
        self.role_of = attrgetter(names[tags["role_tag"]])
        self.content_of = attrgetter(names[tags["content_tag"]])
        self.verdicts: dict[tuple, bool] = {}

    def verdict(self, roles: tuple) -> bool:
        """Whether the checker's rules find nothing in a record with these roles and non-blank contents."""
        spec = self.spec
        tags = spec.tags
        if any(r.__class__ is not str for r in roles) or (tags["function_tag"] is not None and tags["function_tag"] in roles):
            return False  # function calls: their content must be JSON, the precise path checks it
        rt, ct = tags["role_tag"], tags["content_tag"]
        record = {spec.columns["messages"]: [{rt: r, ct: "x"} for r in roles]}
        return not self.rules(record)

    def clean(self, recs: list) -> bool:
        """No record of the chunk has a finding: every distinct role sequence passes the rules, and no content
        is whitespace only (empty contents do not decode: min_length=1). Set- and map-wise, in C loops."""
        verdicts, msgs_of, role_of = self.verdicts, self.msgs_of, self.role_of
        all_msgs = list(map(msgs_of, recs))
        for key in set(map(tuple, map(partial(map, role_of), all_msgs))):
            v = verdicts.get(key)
            if v is None:
                v = verdicts[key] = self.verdict(key)
            if not v:
                return False
        return not any(map(str.isspace, map(self.content_of, chain.from_iterable(all_msgs))))


def _list_item(struct: type, attr: str) -> type:
    """The Struct type of the items of the list field `attr` (required, list[Struct] possibly Annotated)."""
    import msgspec

    info = msgspec.inspect.type_info(struct)
    field = next(f for f in info.fields if f.name == attr)
    t = field.type
    if not isinstance(t, msgspec.inspect.ListType) or not isinstance(t.item_type, msgspec.inspect.StructType):
        raise Unmappable("messages is not a list of objects")
    return t.item_type.cls


def build(spec: DatasetSpec, checker, cutoff_len: int | None) -> FastChecker | None:
    """The fast checker for this dataset, or None where the precise path alone applies."""
    cols, tags = spec.columns, spec.tags
    if (spec.formatting != "sharegpt" or spec.stage != "sft" or spec.ranking or cutoff_len or cols.get("tools")
            or cols.get("kto_tag") or not cols.get("messages") or not tags.get("role_tag")
            or not tags.get("content_tag")):
        return None
    try:
        import msgspec
    except ImportError:
        return None
    from . import schemas

    # roles decode as one of the tags a clean record can have (others: the chunk takes the precise path); the
    # strings are then msgspec's own Literal objects, not one new string per message
    roles = tuple(dict.fromkeys(t for t in (tags["system_tag"], tags["user_tag"], tags["assistant_tag"],
                                            tags["observation_tag"]) if t is not None))
    try:
        # contents decode only when non-empty (an empty one: the chunk takes the precise path)
        types = _Types({(cols["messages"], "[]", tags["role_tag"]): Literal[roles],
                        (cols["messages"], "[]", tags["content_tag"]): Annotated[str, msgspec.Meta(min_length=1)]})
        record_type = types.node(schemas.filled_schema(spec.schema_name, spec.names))
        if record_type not in types.fields or cols["messages"] not in types.required[record_type]:
            return None
        msg_type = _list_item(record_type, types.fields[record_type][cols["messages"]])
        if not {tags["role_tag"], tags["content_tag"]} <= types.required[msg_type]:
            return None
        return FastChecker(spec, checker.rules, record_type, types)
    except (Unmappable, TypeError, ValueError, StopIteration):
        return None


def check_doc(fast: FastChecker, kind: str, doc: bytes) -> tuple:
    """Decode one chunk and test it (in a worker process or inline): ("ok", n, hashes, columns present),
    ("reject",) when its records go one by one through the precise path, ("bad",) when an array chunk is not
    valid JSON (the precise reader takes over from there)."""
    errors = fast.errors
    if kind == "lines":
        try:
            recs = fast.one.decode_lines(doc)
        except errors:
            return ("reject",)
        raws = doc.split(b"\n")
        if not all(raws) or any(map(bytes.isspace, raws)):  # blank lines: decode_lines skips them
            raws = [raw for raw in raws if raw and not raw.isspace()]
    else:
        try:
            raws = [bytes(r) for r in fast.raws.decode(doc)]
        except errors:
            return ("bad",)
        try:
            recs = fast.many.decode(doc)
        except errors:
            return ("reject",)
    if len(recs) != len(raws) or not fast.clean(recs):  # decode_lines reads `{} {}` as two records
        return ("reject",)
    unset = fast.msgspec.UNSET
    present = frozenset(col for col, attr in fast.optional_attrs.items()
                        if any(r is not unset for r in map(attrgetter(attr), recs)))
    lengths = array("q", map(len, raws)).tobytes() if kind == "array" else b""
    return ("ok", len(raws), array("q", map(hash, raws)).tobytes(), present, lengths)


_WORKER_FAST: FastChecker | None = None  # set in the parent before forking the workers


def _lines_block(path: str, k: int, size: int, chunk: int) -> tuple:
    """Worker: the k-th block of a JSON lines file, the lines that start in [k*chunk, (k+1)*chunk): (offset, length
    of its data without the last newline, number of lines, check_doc's result), or None for a block in which no
    line starts."""
    with open(path, "rb") as fh:

        def line_start(at: int) -> int:  # the first line start at or after `at` (> 0)
            fh.seek(at - 1)
            skipped = at - 1
            while True:
                piece = fh.read(1 << 16)
                if not piece:
                    return size
                nl = piece.find(b"\n")
                if nl != -1:
                    return skipped + nl + 1
                skipped += len(piece)

        start = 0 if k == 0 else line_start(k * chunk)
        end = size if (k + 1) * chunk >= size else line_start((k + 1) * chunk)
        if start >= end:
            return None
        fh.seek(start)
        data = fh.read(end - start)
    if data.endswith(b"\n"):
        data = data[:-1]
    if k == 0 and data.startswith(_BOM):
        data = data[3:]
        start += 3
    return start, len(data), data.count(b"\n") + 1, check_doc(_WORKER_FAST, "lines", data)


def _work_lines(task: tuple) -> tuple | None:
    return _lines_block(*task)


def _work(task: tuple) -> tuple:
    kind, path, offset, length, prefix, suffix = task
    with open(path, "rb") as fh:
        fh.seek(offset)
        doc = prefix + fh.read(length) + suffix
    return check_doc(_WORKER_FAST, kind, doc)


WORKER_TIMEOUT = 120.0  # seconds for one chunk before the workers are given up (the chunk is checked here)
PARALLEL_MIN_BYTES = 48 << 20  # smaller files: one process (starting workers costs more than it saves)


def worker_count(size: int) -> int:
    """Worker processes for a file of `size` bytes: the CPUs this process may use (MINICPM_VALIDATE_WORKERS
    overrides; 0 or 1 = none), only for large files and where fork keeps hash() equal across processes."""
    env = os.environ.get("MINICPM_VALIDATE_WORKERS")
    if env is not None:
        n = int(env)
    else:
        if size < PARALLEL_MIN_BYTES:
            return 0
        n = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    if n < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return n


class _WorkerLost(Exception):
    """A worker process did not answer in time, died, or failed on its job."""


def _serve(conn) -> None:
    """A worker process: run each `(fn, task)` received and send the result back, until None (or the parent's
    end closes)."""
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        fn, task = job
        try:
            conn.send((True, fn(task)))
        except Exception:  # the parent reruns the job itself, so the error is raised there with its traceback
            conn.send((False, None))


class _Workers:
    """Forked worker processes, each with its own pipe, jobs dealt round-robin: results come back per worker in
    the order sent. No lock is shared between processes, so giving workers up (kill) can never hang, unlike
    multiprocessing.Pool.terminate() with jobs in flight (seen hanging in its task handler thread)."""

    def __init__(self, n: int):
        ctx = multiprocessing.get_context("fork")
        self.conns = []
        self.procs = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="minicpm-validate-worker")
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.turn = 0

    def submit(self, fn, task) -> int:
        """Send a job to the next worker; returns that worker's index (to read its result in order)."""
        i = self.turn
        self.turn = (i + 1) % len(self.conns)
        try:
            self.conns[i].send((fn, task))
        except OSError as exc:
            raise _WorkerLost from exc
        return i

    def result(self, i: int, timeout: float):
        """The result of worker `i`'s oldest job still unanswered."""
        conn = self.conns[i]
        try:
            if not conn.poll(timeout):
                raise _WorkerLost("no answer in time")
            ok, value = conn.recv()
        except (OSError, EOFError) as exc:
            raise _WorkerLost from exc
        if not ok:
            raise _WorkerLost("the job failed")
        return value

    def close(self) -> None:
        """Stop every worker now (jobs in flight are dropped) and reap it."""
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc, conn in zip(self.procs, self.conns, strict=True):
            proc.join()
            conn.close()


class _Pipeline:
    """Chunks checked in order: inline, or by worker processes with a bounded number in flight."""

    def __init__(self, fast: FastChecker, path, workers: int):
        self.fast = fast
        self.path = str(path)
        self.pool = None
        self.pending: deque = deque()
        self.window = 2 * workers
        if workers:
            global _WORKER_FAST
            _WORKER_FAST = fast
            self.pool = _Workers(workers)

    def submit(self, span: tuple, kind: str, doc: bytes | None, offset: int, length: int, prefix: bytes,
               suffix: bytes) -> list:
        """Queue a chunk; returns the (span, result) pairs now ready, in order."""
        if self.pool is None and not self.pending:
            if doc is None:
                doc = prefix + _reread(self.path, offset, length) + suffix
            return [(span, check_doc(self.fast, kind, doc))]
        return self.submit_task(span, _work, (kind, self.path, offset, length, prefix, suffix))

    def submit_task(self, span, fn, task) -> list:
        """Queue `fn(task)` (a worker's job); returns the (span, result) pairs now ready, in order."""
        if self.pool is None:  # no workers (any more): in order after those still pending
            self.pending.append((span, fn, task, None))
            return self.drain()
        try:
            worker = self.pool.submit(fn, task)
        except _WorkerLost:
            self.close()
            worker = None
        self.pending.append((span, fn, task, worker))
        out = []
        while len(self.pending) >= self.window:
            out.append(self._next())
        return out

    def _next(self) -> tuple:
        span, fn, task, worker = self.pending.popleft()
        if self.pool is not None and worker is not None:
            try:
                return span, self.pool.result(worker, WORKER_TIMEOUT)
            except _WorkerLost:  # killed, stuck or failed: go on without workers (a failure recurs here, raised)
                self.close()
        return span, fn(task)

    def drain(self) -> list:
        out = []
        while self.pending:
            out.append(self._next())
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


class _Accept:
    """Take an accepted chunk's hashes and columns into the run's state, or refuse it untouched."""

    def __init__(self, fast: FastChecker, seen: set[int] | None, hashes: array | None, missing: set[str]):
        self.fast = fast
        self.seen = seen
        self.hashes = hashes
        self.missing = missing

    def __call__(self, result: tuple, lines_of: Callable[[list[int], bytes], list[int]]) -> FastChunk | None:
        """The accepted chunk, or None (nothing changed). `lines_of(indexes, lengths)` gives the lines of those
        records of the chunk."""
        if result[0] != "ok":
            return None
        _, n, hash_bytes, present, lengths = result
        found = []
        for col in self.missing:
            if col not in self.fast.optional_attrs and col not in self.fast.required_columns:
                return None  # not a schema property: which records hold it is unknown here
            if col in present or col in self.fast.required_columns:
                found.append(col)
        dups = []
        seen = self.seen
        if seen is not None:
            hs = array("q")
            hs.frombytes(hash_bytes)
            if seen.isdisjoint(hs):  # no duplicate of an earlier chunk's record
                before = len(seen)
                seen.update(hs)
                ks = []
                if len(seen) - before != len(hs):  # duplicates within this chunk
                    mine: set[int] = set()
                    for k, h in enumerate(hs):
                        if h in mine:
                            ks.append(k)
                        else:
                            mine.add(h)
            else:  # what the precise path does record by record
                ks = []
                for k, h in enumerate(hs):
                    if h in seen:
                        ks.append(k)
                    else:
                        seen.add(h)
            if ks:
                dups = [(k, ln, hs[k]) for k, ln in zip(ks, lines_of(ks, lengths), strict=True)]
            self.hashes.extend(hs)
        self.missing.difference_update(found)
        return FastChunk(n, dups)


def json_items(stream: RecordStream, fast: FastChecker, *, seen: set[int] | None, hashes: array | None,
               missing: set[str], workers: int | None = None):
    """What `iter(stream)` yields for a JSON / JSON lines file, except that runs of accepted records come as one
    FastChunk. Chunks are checked by `workers` processes (default: worker_count(file size))."""
    accept = _Accept(fast, seen, hashes, missing)
    with open(stream.path, "rb") as fh:
        head = fh.read(4096)
    stripped = head.lstrip()
    if stripped.startswith(_BOM) and stripped[3:].lstrip().startswith(b"["):
        yield from stream  # a BOM before an array: rare, precise path
        return
    pipe = _Pipeline(fast, stream.path, worker_count(stream.size) if workers is None else workers)
    try:
        if stripped.startswith(b"["):
            yield from _array(stream, pipe, accept)
        elif pipe.pool is not None:
            yield from _lines_parallel(stream, pipe, accept)
        else:
            yield from _lines(stream, pipe, accept)
    finally:
        pipe.close()


def _reread(path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def _lines_settle(stream: RecordStream, accept: _Accept, span: tuple, result: tuple):
    """Items of one block of JSON lines: a FastChunk, or its lines for the precise path."""
    offset, length, lineno, data, n_lines = span
    path, mask = stream.path, stream.mask

    def lines_of(ks, _lengths):
        nonlocal data
        if n_lines == result[1]:  # no blank line: record k is on line k
            return [lineno + 1 + k for k in ks]
        data = data if data is not None else _reread(path, offset, length)
        lines = [ln for ln, raw in enumerate(data.split(b"\n"), lineno + 1) if raw and not raw.isspace()]
        return [lines[k] for k in ks]

    done = accept(result, lines_of)
    if done is not None:
        yield done
        return
    data = data if data is not None else _reread(path, offset, length)
    use_shapes = mask is not None and _utf8_ok(codecs.getincrementaldecoder("utf-8")(), data + b"\n")
    ln = lineno
    for raw in data.split(b"\n"):
        ln += 1
        if not raw or raw.isspace():
            continue
        yield ln, LAZY, raw, (mask(raw) if use_shapes else None)


def _lines_parallel(stream: RecordStream, pipe: _Pipeline, accept: _Accept):
    """JSON lines with worker processes: each reads and checks its own block of the file (the lines starting in
    a LINES_BLOCK-sized byte range), so this process reads nothing but what the precise path needs."""
    size = stream.size
    lineno = 0

    def settle(ready):
        nonlocal lineno
        for _, out in ready:
            if out is None:
                continue
            offset, length, n_lines, result = out
            yield from _lines_settle(stream, accept, (offset, length, lineno, None, n_lines), result)
            lineno += n_lines
            stream.position = min(offset + length + 1, size)

    for k in range((size + LINES_BLOCK - 1) // LINES_BLOCK):
        yield from settle(pipe.submit_task(k, _work_lines, (str(stream.path), k, size, LINES_BLOCK)))
    yield from settle(pipe.drain())
    stream.position = size


def _lines(stream: RecordStream, pipe: _Pipeline, accept: _Accept):
    """loader.RecordStream._json_lines, block by block, checked inline."""
    lineno = 0
    with open(stream.path, "rb") as fh:
        for start, data in line_blocks(fh, CHUNK):
            n_lines = data.count(b"\n") + 1
            span = (start, len(data), lineno, data, n_lines)
            for sp, result in pipe.submit(span, "lines", data, start, len(data), b"", b""):
                yield from _lines_settle(stream, accept, sp, result)
            lineno += n_lines
            stream.position = min(start + len(data) + 1, stream.size)
    stream.position = stream.size


def _array(stream: RecordStream, pipe: _Pipeline, accept: _Accept):
    """loader._ArrayReader, chunk by chunk: cut before the last record-opening literal of ~CHUNK bytes, decode
    `[` + the records + `]`."""
    path = stream.path
    fast = pipe.fast

    def settle(span, result):
        """Yield the chunk's items; returns the (offset, line) to resume the precise reader at, if any."""
        offset, length, line, final, doc = span
        if result[0] == "bad":
            return offset, line

        def get_doc():
            nonlocal doc
            if doc is None:
                doc = b"[" + _reread(path, offset, length) + (b"" if final else b"]")
            return doc

        def lines_of(ks, lengths):
            sizes = array("q")
            sizes.frombytes(lengths)
            return _record_lines(get_doc(), sizes, line, ks)

        done = accept(result, lines_of)
        if done is not None:
            yield done
            return None
        raws = [bytes(r) for r in fast.raws.decode(get_doc())]
        yield from zip(_raw_lines(get_doc(), raws, line), itertools.repeat(LAZY), raws, itertools.repeat(None))
        return None

    resume = None
    with open(path, "rb") as fh:
        buf = fh.read(CHUNK)
        base = 0  # file offset of buf[0]
        eof = not buf
        pos = buf.find(b"[") + 1
        while pos < len(buf) and buf[pos] in _WS:
            pos += 1
        if pos >= len(buf) or buf[pos:pos + 1] == b"]":
            yield from stream  # an empty array, or whitespace longer than a chunk: precise path
            return
        line = 1 + buf.count(b"\n", 0, pos)
        m = _OPEN_RECORD.match(buf, pos)
        lit = m.group(0) if m else None
        while resume is None:
            while not eof and len(buf) - pos < CHUNK:
                more = fh.read(CHUNK)
                if not more:
                    eof = True
                    break
                buf = buf[pos:] + more
                base += pos
                pos = 0
            if eof:
                cut = len(buf)
                nxt = None
            else:
                cut = nxt = -1
                if lit is not None:
                    q = buf.rfind(lit, pos + 1)
                    while q != -1:
                        j = q - 1
                        while j > pos and buf[j] in _WS:
                            j -= 1
                        if buf[j] == 0x2C:  # ','
                            k = j - 1
                            while k > pos and buf[k] in _WS:
                                k -= 1
                            if buf[k] == 0x7D:  # '}'
                                cut, nxt = k + 1, q
                                break
                        q = buf.rfind(lit, pos + 1, q)
                if cut == -1:
                    if len(buf) - pos < _MAX_BUF:
                        more = fh.read(CHUNK)
                        if more:
                            buf = buf[pos:] + more
                            base += pos
                            pos = 0
                        else:
                            eof = True
                        continue
                    resume = base + pos, line  # no cut found: precise path from here
                    break
            final = nxt is None
            doc = b"[" + buf[pos:cut] + (b"" if final else b"]") if pipe.pool is None else None
            span = (base + pos, cut - pos, line, final, doc)
            for sp, result in pipe.submit(span, "array", doc, base + pos, cut - pos, b"[", b"" if final else b"]"):
                resume = yield from settle(sp, result)
                if resume is not None:
                    break
            if final or resume is not None:
                break
            line += buf.count(b"\n", pos, nxt)
            pos = nxt
            stream.position = base + pos
        if resume is None:
            for sp, result in pipe.drain():
                resume = yield from settle(sp, result)
                if resume is not None:
                    break
        if resume is not None:
            pipe.close()
            fh.seek(resume[0])
            reader = _ArrayReader(fh, stream.mask, stream.clean)
            for item in reader.resume(resume[1]):
                stream.position = reader.consumed
                yield item
    stream.position = stream.size


def _record_lines(doc: bytes, sizes: array, line: int, ks: list[int]) -> list[int]:
    """The lines of records `ks` (ascending) of `doc` (`[` + records), given every record's size in bytes."""
    out = []
    off = 1  # end of the previous record
    counted = 1  # newlines before this offset are in `line`
    want = iter(ks)
    k_next = next(want, None)
    sep = _SEP.match
    for k, size in enumerate(sizes):
        if k_next is None:
            break
        o = sep(doc, off).end()
        if k == k_next:
            line += doc.count(b"\n", counted, o)
            counted = o
            out.append(line)
            k_next = next(want, None)
        off = o + size
    return out


_SEP = re.compile(rb"[ \t\r\n,]*")


def _raw_lines(doc: bytes, raws: list[bytes], line: int) -> list[int]:
    """The line of each raw record in `doc` (`[` + records), the first record being on `line`."""
    start = off = 1
    out = []
    for raw in raws:
        o = doc.find(raw, off)  # only whitespace and ',' lie between records
        line += doc.count(b"\n", start, o)
        out.append(line)
        start, off = o, o + len(raw)
    return out
