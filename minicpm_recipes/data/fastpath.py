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
"""

from __future__ import annotations

import codecs
import itertools
from array import array
from collections.abc import Callable
from operator import attrgetter
from typing import Annotated, Any

from .loader import _OPEN_RECORD, CHUNK, LAZY, RecordStream, _ArrayReader, _utf8_ok
from .spec import DatasetSpec

_BOM = b"\xef\xbb\xbf"
_WS = b" \t\r\n"
_MAX_BUF = CHUNK << 3  # a record longer than this: precise path


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

    def __init__(self):
        import msgspec

        self.msgspec = msgspec
        self.n = 0
        self.fields: dict[type, dict[str, str]] = {}
        self.required: dict[type, set[str]] = {}

    def node(self, schema: Any) -> Any:
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
            if t in _SCALARS:
                alts.append(_SCALARS[t])
            elif t == "array":
                alts.append(self.array(schema))
            elif t == "object":
                alts.append(self.obj(schema))
            else:
                raise Unmappable(f"type {t!r}")
        out = alts[0]
        for a in alts[1:]:
            out = out | a
        return out

    def array(self, schema: dict) -> Any:
        items = schema.get("items")
        if items is None:
            inner = list
        elif isinstance(items, dict):
            inner = list[self.node(items)]
        else:
            raise Unmappable("tuple items")
        k = schema.get("minItems")
        if k is not None:
            if not isinstance(k, int) or isinstance(k, bool):
                raise Unmappable("minItems")
            inner = Annotated[inner, self.msgspec.Meta(min_length=k)]
        return inner

    def obj(self, schema: dict) -> Any:
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
            typ = self.node(props[key]) if key in props else Any
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
        self.column_attrs = {col: top[col] for col in top}
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
        verdicts, msgs_of, role_of, content_of = self.verdicts, self.msgs_of, self.role_of, self.content_of
        isspace = str.isspace
        for r in recs:
            ms = msgs_of(r)
            key = tuple(map(role_of, ms))
            v = verdicts.get(key)
            if v is None:
                v = verdicts[key] = self.verdict(key)
            if not v:
                return False
            cs = list(map(content_of, ms))
            if not all(cs) or any(map(isspace, cs)):
                return False
        return True


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
        import msgspec  # noqa: F401
    except ImportError:
        return None
    from . import schemas

    try:
        types = _Types()
        record_type = types.node(schemas.filled_schema(spec.schema_name, spec.names))
        if record_type not in types.fields or cols["messages"] not in types.required[record_type]:
            return None
        msg_type = _list_item(record_type, types.fields[record_type][cols["messages"]])
        if not {tags["role_tag"], tags["content_tag"]} <= types.required[msg_type]:
            return None
        return FastChecker(spec, checker.rules, record_type, types)
    except (Unmappable, TypeError, ValueError, StopIteration):
        return None


class _Accept:
    """Accept a decoded chunk into the run's state (duplicates, columns seen) or refuse it untouched."""

    def __init__(self, fast: FastChecker, seen: set[int] | None, hashes: array | None, missing: set[str]):
        self.fast = fast
        self.seen = seen
        self.hashes = hashes
        self.missing = missing

    def __call__(self, recs: list, raws: list[bytes], lines_of: Callable[[], list[int]]) -> FastChunk | None:
        """The accepted chunk, or None (nothing changed). `lines_of()` gives each raw record's line."""
        fast = self.fast
        if len(recs) != len(raws) or not fast.clean(recs):
            return None
        found = []
        if self.missing:
            unset = fast.msgspec.UNSET
            for col in self.missing:
                attr = fast.column_attrs.get(col)
                if attr is None:
                    return None  # not a schema property: which records hold it is unknown here
                get = attrgetter(attr)
                if any(get(r) is not unset for r in recs):
                    found.append(col)
        dups = []
        seen = self.seen
        if seen is not None:
            hs = [hash(r) for r in raws]
            if len(set(hs)) == len(hs) and seen.isdisjoint(hs):
                seen.update(hs)
            else:  # what the precise path does record by record
                lines = lines_of()
                for k, h in enumerate(hs):
                    if h in seen:
                        dups.append((k, lines[k], h))
                    else:
                        seen.add(h)
            self.hashes.extend(hs)
        self.missing.difference_update(found)
        return FastChunk(len(raws), dups)


def json_items(stream: RecordStream, fast: FastChecker, *, seen: set[int] | None, hashes: array | None,
               missing: set[str]):
    """What `iter(stream)` yields for a JSON / JSON lines file, except that runs of accepted records come as one
    FastChunk."""
    accept = _Accept(fast, seen, hashes, missing)
    with open(stream.path, "rb") as fh:
        head = fh.read(4096)
    stripped = head.lstrip()
    if stripped.startswith(_BOM):
        if stripped[3:].lstrip().startswith(b"["):
            yield from stream  # a BOM before an array: rare, precise path
            return
    elif stripped.startswith(b"["):
        yield from _array(stream, fast, accept)
        return
    yield from _lines(stream, fast, accept)


def _lines(stream: RecordStream, fast: FastChecker, accept: _Accept):
    """loader.RecordStream._json_lines, chunk by chunk."""
    mask = stream.mask
    decode_lines = fast.one.decode_lines
    errors = fast.errors
    with open(stream.path, "rb") as fh:
        rest = b""
        lineno = 0
        pos = 0
        first = True
        while True:
            chunk = fh.read(CHUNK)
            if chunk:
                data = rest + chunk
                cut = data.rfind(b"\n")
                if cut == -1:
                    rest = data
                    continue
                rest = data[cut + 1:]
                data = data[:cut]
            else:
                data, rest = rest, b""
                if not data:
                    break
            if first and data.startswith(_BOM):
                data = data[3:]
            first = False
            lines = data.split(b"\n")
            raws = [raw for raw in lines if raw and not raw.isspace()]
            try:
                recs = decode_lines(data)
            except errors:
                recs = None
            done = None
            if recs is not None:
                def lines_of(lines=lines, start=lineno):
                    return [ln for ln, raw in enumerate(lines, start + 1) if raw and not raw.isspace()]
                done = accept(recs, raws, lines_of)
            if done is not None:
                yield done
            else:
                use_shapes = mask is not None and _utf8_ok(codecs.getincrementaldecoder("utf-8")(), data + b"\n")
                ln = lineno
                for raw in lines:
                    ln += 1
                    if not raw or raw.isspace():
                        continue
                    yield ln, LAZY, raw, (mask(raw) if use_shapes else None)
            lineno += len(lines)
            pos += len(data) + 1
            stream.position = min(pos, stream.size)
            if not chunk:
                break
    stream.position = stream.size


def _array(stream: RecordStream, fast: FastChecker, accept: _Accept):
    """loader._ArrayReader, chunk by chunk: cut before the last record-opening literal of ~CHUNK bytes, decode
    `[` + the records + `]`."""
    errors = fast.errors
    with open(stream.path, "rb") as fh:
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
        while True:
            while not eof and len(buf) - pos < CHUNK:
                more = fh.read(CHUNK)
                if not more:
                    eof = True
                    break
                buf = buf[pos:] + more
                base += pos
                pos = 0
            if eof:
                doc = b"[" + buf[pos:]
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
                            continue
                        eof = True
                        continue
                    break  # no cut found: precise path from here
                doc = b"[" + buf[pos:cut] + b"]"
            try:
                raws = [bytes(r) for r in fast.raws.decode(doc)]
            except errors:
                break  # not valid JSON (or a wrong cut): precise path from here
            try:
                recs = fast.many.decode(doc)
            except errors:
                recs = None
            def lines_of(doc=doc, raws=raws, line=line):
                start = off = 1
                ln = line
                out = []
                for raw in raws:
                    o = doc.find(raw, off)  # only whitespace and ',' lie between records
                    ln += doc.count(b"\n", start, o)
                    out.append(ln)
                    start, off = o, o + len(raw)
                return out

            done = accept(recs, raws, lines_of) if recs is not None else None
            if done is not None:
                yield done
            else:
                yield from zip(lines_of(), itertools.repeat(LAZY), raws, itertools.repeat(None))
            if nxt is None:
                stream.position = stream.size
                return
            line += buf.count(b"\n", pos, nxt)
            pos = nxt
            stream.position = base + pos
        fh.seek(base + pos)
        reader = _ArrayReader(fh, stream.mask, stream.clean)
        for item in reader.resume(line):
            stream.position = reader.consumed
            yield item
    stream.position = stream.size
