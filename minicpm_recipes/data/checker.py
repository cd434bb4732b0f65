"""Check one record: the compiled JSON Schema, then the rules LLaMA-Factory's converter and processors apply.

Pure: `make_checker(spec)` returns a `Checker` whose `check(record)` gives a list of findings
`(path, rule, message, expected, hint, severity)` (empty when the record is fine). The rules mirror
llamafactory/data/converter.py and processor/*.py of LLaMA-Factory 0.9.5 exactly:

- sharegpt/openai: a leading system message (role == tags.system_tag) is taken as the system prompt; the
  remaining turns must alternate user/observation (even positions) and assistant/function (odd positions);
  their count must be even (odd for ranking data) and not zero; otherwise the converter logs
  "Invalid role tag"/"Invalid message count" and the processor drops the record.
- ranking: chosen/rejected must be strings (alpaca) or message objects with an assistant/function role.
- kto: the label column must hold a real JSON boolean, or the record is dropped.
- function messages and the tools column must hold valid JSON (LLaMA-Factory raises otherwise).
Warnings: empty or whitespace-only content, samples longer than a cutoff_len estimate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from . import schemas
from .loader import ShapeMask
from .spec import DatasetSpec

Finding = tuple[str, str, str, str, str, str]  # path, rule, message, expected, hint, severity

MESSAGE_OVERHEAD_TOKENS = 6  # role markers a chat template adds per message (estimate)


def estimate_tokens(text: str) -> int:
    """A rough token count: ~4 ASCII characters per token, ~1 token per CJK/other character."""
    if text.isascii():
        return len(text) // 4 + 1
    n_bytes = len(text.encode("utf-8"))
    wide = (n_bytes - len(text)) // 2  # 3-byte characters add 2 bytes each
    return (len(text) - wide) // 4 + wide + 1


def _names(*tags: str | None) -> str:
    names = [repr(t) for t in tags if t is not None]
    return " or ".join(names) if names else "nothing (no tag mapped)"


def _p(*parts) -> str:
    return schemas.json_path(parts)


@dataclass
class Checker:
    spec: DatasetSpec
    validate: Callable[[Any], Any]
    rules: Callable[[Any], list[Finding] | None]
    cutoff_len: int | None = None
    # shape cache (see loader.ShapeMask): None where a check depends on long string contents
    shape_mask: ShapeMask | None = None

    def check(self, record: Any) -> list[Finding]:
        try:
            self.validate(record)
        except Exception:  # fastjsonschema.JsonSchemaValueException: explain every error (slow path)
            return [(path, rule, msg, exp, hint, "error")
                    for path, rule, msg, exp, hint in schemas.schema_errors(
                        self.spec.schema_name, self.spec.names, record)] or [
                ("$", "schema", "does not match the schema", self.spec.schema_name, "", "error")]
        return self.rules(record) or []

    def shape_cacheable(self, record: Any) -> bool:
        """A clean record whose findings depend on its shape only: not one with a function call (whose long
        content must be JSON)."""
        spec = self.spec
        func = spec.tags.get("function_tag")
        if spec.formatting != "sharegpt" or func is None:
            return True
        rt = spec.tags["role_tag"]
        msgs = list(record.get(spec.columns["messages"]) or [])
        msgs += [record.get(c) for c in (spec.columns.get("chosen"), spec.columns.get("rejected")) if c]
        return not any(isinstance(m, dict) and m.get(rt) == func for m in msgs)

    # --- file-level helpers (used by validate.py) ---
    def text_of(self, record: Any) -> str:
        """What the pre-training processor tokenizes: the user content the alpaca converter builds."""
        cols = self.spec.columns
        parts = [record.get(c) for c in (cols.get("prompt"), cols.get("query")) if c]
        return "\n".join(p for p in parts if p and isinstance(p, str))

    def kto_label(self, record: Any) -> Any:
        col = self.spec.columns.get("kto_tag")
        return record.get(col) if col and isinstance(record, dict) else None

    def accessed_columns(self) -> list[str]:
        """Columns LLaMA-Factory reads as `example[column]`: absent from every record means a KeyError."""
        cols, fmt, stage = self.spec.columns, self.spec.formatting, self.spec.stage
        if fmt == "alpaca":
            names = ["prompt", "query", "history", "system", "tools", "images", "videos", "audios", "kto_tag"]
            if stage == "rm" or self.spec.ranking:
                names += ["chosen", "rejected"]
            names.append("response")
        else:
            names = ["messages", "images", "videos", "audios", "kto_tag"]
            if fmt == "sharegpt":
                names.append("tools")
            if self.spec.ranking:
                names += ["chosen", "rejected"]
        return [cols[n] for n in names if cols.get(n)]


def make_checker(spec: DatasetSpec, cutoff_len: int | None = None) -> Checker:
    validate = schemas.compiled(spec.schema_name, spec.names)
    if spec.stage == "pt" and spec.formatting == "alpaca":
        rules = _pretrain_rules(spec, cutoff_len)
    elif spec.formatting == "alpaca":
        rules = _alpaca_rules(spec, cutoff_len)
    elif spec.formatting == "openai":
        rules = _openai_rules(spec, cutoff_len)
    else:
        rules = _sharegpt_rules(spec, cutoff_len)
    return Checker(spec, validate, rules, cutoff_len, _shape_cache(spec, cutoff_len))


# keywords under which a record schema would look at string *values* (the shape cache hides long ones)
_VALUE_KEYWORDS = {"enum", "const", "pattern", "minLength", "maxLength", "format", "contentEncoding",
                   "contentMediaType", "patternProperties", "propertyNames", "dependencies", "if",
                   "additionalProperties", "minProperties", "maxProperties"}


def _uses_string_values(node: Any) -> bool:
    if isinstance(node, dict):
        if _VALUE_KEYWORDS & node.keys():
            return True
        return any(_uses_string_values(v) for k, v in node.items() if k not in ("description", "title", "$id"))
    if isinstance(node, list):
        return any(_uses_string_values(v) for v in node)
    return False


def _shape_cache(spec: DatasetSpec, cutoff_len: int | None) -> ShapeMask | None:
    """Where every finding is decided by a record's shape: alpaca/sharegpt sft and ranking data without a tools
    column and without a cutoff_len estimate (those read long string contents), and a record schema that checks
    no string values."""
    if (cutoff_len or spec.stage not in ("sft", "rm") or spec.formatting not in ("alpaca", "sharegpt")
            or spec.columns.get("tools") or _uses_string_values(schemas.filled_schema(spec.schema_name, spec.names))):
        return None
    names = [t for t in spec.names.values() if t is not None]
    longest = max((len(json_dumps(t)) for t in names), default=2)
    return ShapeMask(max(longest, 16))


def json_dumps(value: str) -> bytes:
    return json.dumps(value).encode()


def _empty(s: Any) -> bool:
    return not s or (isinstance(s, str) and s.isspace())


def _too_long(tokens: int, cutoff_len: int) -> Finding:
    return ("$", "too-long", f"about {tokens} tokens (estimate)", f"at most cutoff_len={cutoff_len}",
            "shorten or split the sample, or raise cutoff_len; LLaMA-Factory truncates it (and drops it with packing)",
            "warning")


def _kto_flip(path: str) -> Finding:
    return (path, "kto-label", "empty answer with label true",
            "a non-empty answer for a desirable (true) example",
            "LLaMA-Factory reads an empty first answer as an undesirable example: write the answer or set the "
            "label to false", "error")


def _tools_finding(rec: dict, tools_col: str | None, allow_objects: bool) -> Finding | None:
    if not tools_col:
        return None
    tools = rec.get(tools_col)
    if not tools or (allow_objects and isinstance(tools, (list, dict))):
        return None
    try:
        orjson.loads(tools)
    except orjson.JSONDecodeError:
        return (_p(tools_col), "tools-json", "is not valid JSON", "a JSON string describing the tools",
                "LLaMA-Factory raises 'Invalid JSON format in tool description'; fix or remove the value", "error")
    return None


def _function_call_finding(content: Any, path: str) -> Finding | None:
    """LLaMA-Factory's FunctionFormatter json-parses function messages into [{"name", "arguments"}]."""
    try:
        calls = orjson.loads(content)
    except (orjson.JSONDecodeError, TypeError):
        return (path, "function-json", "function-call content is not valid JSON",
                'a JSON object {"name": ..., "arguments": {...}} or a list of them',
                "LLaMA-Factory raises 'Invalid JSON format in function message'", "error")
    calls = calls if isinstance(calls, list) else [calls]
    for call in calls:
        if not isinstance(call, dict) or "name" not in call or "arguments" not in call:
            return (path, "function-json", "function call without 'name' and 'arguments'",
                    'a JSON object {"name": ..., "arguments": {...}}', "give every call a name and arguments",
                    "error")
    return None


def _alpaca_rules(spec: DatasetSpec, cutoff_len: int | None):
    cols = spec.columns
    prompt, query, response = cols["prompt"], cols["query"], cols["response"]
    history, system, tools = cols["history"], cols["system"], cols["tools"]
    chosen, rejected = cols["chosen"], cols["rejected"]
    stage = spec.stage
    answer_cols = [c for c in ((chosen, rejected) if stage == "rm" else (response,)) if c]
    prompt_path = _p(prompt or query or "instruction")
    kto_col = cols["kto_tag"] if stage == "kto" and response else None

    def rules(rec: dict) -> list[Finding] | None:
        out = None
        get = rec.get
        p = get(prompt) if prompt else None
        q = get(query) if query else None
        if not p and not q or ((not p or p.isspace()) and (not q or q.isspace())):
            out = [(prompt_path, "empty-content", "instruction and input are empty or whitespace",
                    "a non-empty prompt", "write the prompt into the instruction", "warning")]
        for c in answer_cols:
            v = get(c)
            if not v or v.isspace():
                out = (out or []) + [(_p(c), "empty-content", "empty or whitespace-only answer", "non-empty text",
                                      "remove the record or write the answer", "warning")]
        if kto_col and get(kto_col) is True and not get(response):
            out = (out or []) + [_kto_flip(_p(response))]
        if tools:
            f = _tools_finding(rec, tools, False)
            if f:
                out = (out or []) + [f]
        if cutoff_len:
            texts = [p, q, get(system) if system else None] + [get(c) for c in answer_cols]
            for pair in (get(history) or []) if history else []:
                texts += list(pair)
            n = sum(estimate_tokens(t) for t in texts if isinstance(t, str)) + MESSAGE_OVERHEAD_TOKENS * 2
            if n > cutoff_len:
                out = (out or []) + [_too_long(n, cutoff_len)]
        return out

    return rules


def _pretrain_rules(spec: DatasetSpec, cutoff_len: int | None):
    prompt, query = spec.columns["prompt"], spec.columns["query"]
    path = _p(prompt or "text")

    def rules(rec: dict) -> list[Finding] | None:
        p = rec.get(prompt) if prompt else None
        q = rec.get(query) if query else None
        if (not p or p.isspace()) and (not q or q.isspace()):
            return [(path, "empty-content", "empty or whitespace-only text", "non-empty text",
                     "remove empty lines/records; LLaMA-Factory trains them as a lone end-of-text token", "warning")]
        return None

    return rules


def _sharegpt_rules(spec: DatasetSpec, cutoff_len: int | None):
    cols, tags = spec.columns, spec.tags
    mcol, rt, ct = cols["messages"], tags["role_tag"], tags["content_tag"]
    user, asst, obs, func, sys_tag = (tags["user_tag"], tags["assistant_tag"], tags["observation_tag"],
                                      tags["function_tag"], tags["system_tag"])
    accept = ((user, obs), (asst, func))
    expected = (_names(user, obs), _names(asst, func))
    ranking = bool(spec.ranking)
    chosen, rejected, tools, _system = cols["chosen"], cols["rejected"], cols["tools"], cols["system"]
    check_pair = ranking and chosen and rejected
    prefix = _p(mcol)
    kto_col = cols["kto_tag"] if spec.stage == "kto" else None

    def rules(rec: dict) -> list[Finding] | None:
        out = None
        msgs = rec[mcol]
        n_all = len(msgs)
        start = 1 if (sys_tag and n_all and msgs[0][rt] == sys_tag) else 0
        for i in range(start, n_all):
            m = msgs[i]
            role = m[rt]
            turn = (i - start) & 1
            if role not in accept[turn]:
                if role == sys_tag and sys_tag is not None:
                    msg, hint = (f"system message at position {i}",
                                 "a system message is only allowed as the first message; merge it into the first one")
                else:
                    msg, hint = (f"role {role!r} at turn {i - start} ({'even' if turn == 0 else 'odd'} position)",
                                 "turns must alternate user/observation then assistant/function"
                                 + ("" if role in (user, asst, obs, func) else
                                    f"; map role {role!r} with the entry's tags"))
                out = [(f"{prefix}[{i}].{rt}", "role-alternation", msg, expected[turn], hint, "error")]
                break
        n = n_all - start
        if n == 0:
            out = (out or []) + [(prefix, "empty-messages", "has no turns" + (" besides the system message" if start else ""),
                                  "user/assistant turns", "remove the record", "error")]
        elif ranking and n % 2 == 0:
            out = (out or []) + [(prefix, "message-count", f"{n} turns (after the system message)" if start else f"{n} turns",
                                  "an odd count: the prompt ends with a user turn, chosen/rejected answer it",
                                  "remove the trailing assistant turn (put answers in chosen/rejected)", "error")]
        elif not ranking and n % 2 == 1:
            out = (out or []) + [(prefix, "message-count", f"{n} turns (after the system message)" if start else f"{n} turns",
                                  "an even count: user/assistant pairs ending with an assistant answer",
                                  "add the missing assistant answer or remove the trailing user turn", "error")]
        tokens = 0
        for i in range(start, n_all):
            m = msgs[i]
            c = m[ct]
            if func is not None and m[rt] == func:
                f = _function_call_finding(c, f"{prefix}[{i}].{ct}")
                if f:
                    out = (out or []) + [f]
            elif not c or c.isspace():
                out = (out or []) + [(f"{prefix}[{i}].{ct}", "empty-content", "empty or whitespace-only content",
                                      "non-empty text", "write the content or remove the turn pair", "warning")]
            if cutoff_len:
                tokens += estimate_tokens(c) + MESSAGE_OVERHEAD_TOKENS
        if kto_col and n and rec.get(kto_col) is True and not msgs[-1][ct]:
            out = (out or []) + [_kto_flip(f"{prefix}[{n_all - 1}].{ct}")]
        if check_pair:
            for col in (chosen, rejected):
                m = rec[col]
                if m[rt] not in accept[1]:
                    out = (out or []) + [(_p(col, rt), "chosen-rejected", f"role {m[rt]!r}", expected[1],
                                          "chosen and rejected are assistant answers", "error")]
                c = m[ct]
                if func is not None and m[rt] == func:
                    f = _function_call_finding(c, _p(col, ct))
                    if f:
                        out = (out or []) + [f]
                elif not c or c.isspace():
                    out = (out or []) + [(_p(col, ct), "empty-content", "empty or whitespace-only answer",
                                          "non-empty text", "write the answer", "warning")]
        if tools:
            f = _tools_finding(rec, tools, False)
            if f:
                out = (out or []) + [f]
        if cutoff_len:
            if start:
                tokens += estimate_tokens(msgs[0][ct] or "")
            if check_pair:
                tokens += max(estimate_tokens(rec[chosen][ct] or ""), estimate_tokens(rec[rejected][ct] or ""))
            if tokens > cutoff_len:
                out = (out or []) + [_too_long(tokens, cutoff_len)]
        return out

    return rules


def _openai_rules(spec: DatasetSpec, cutoff_len: int | None):
    """LLaMA-Factory's OpenAIDatasetConverter: tool_calls turn an assistant message into a function call,
    consecutive observation (tool) messages merge into one turn; then the same alternation/parity rules."""
    cols, tags = spec.columns, spec.tags
    mcol, rt, ct = cols["messages"], tags["role_tag"], tags["content_tag"]
    user, asst, obs, func, sys_tag = (tags["user_tag"], tags["assistant_tag"], tags["observation_tag"],
                                      tags["function_tag"], tags["system_tag"])
    mapping = {user: "user", asst: "assistant", obs: "observation", func: "function", sys_tag: "system"}
    accept = (("user", "observation"), ("assistant", "function"))
    ranking = bool(spec.ranking)
    chosen, rejected, tools = cols["chosen"], cols["rejected"], cols["tools"]
    prefix = _p(mcol)

    def rules(rec: dict) -> list[Finding] | None:
        out: list[Finding] = []
        msgs = rec[mcol]
        start = 1 if (sys_tag and msgs and msgs[0][rt] == sys_tag) else 0
        aligned: list[tuple[str, int]] = []
        pending = None
        tokens = 0
        for i in range(start, len(msgs)):
            m = msgs[i]
            role, content = m[rt], m[ct]
            if role in (asst, func) and m.get("tool_calls"):
                role = func
                for j, call in enumerate(m["tool_calls"]):
                    if not isinstance(call, dict) or "function" not in call:
                        out.append((f"{prefix}[{i}].tool_calls[{j}]", "tool-calls", "has no 'function'",
                                    '{"function": {"name": ..., "arguments": ...}}', "", "error"))
            elif content is None:
                out.append((f"{prefix}[{i}].{ct}", "schema:type", "got null", "a string (null only with tool_calls)",
                            "write the content", "error"))
                return out
            elif not content or content.isspace():
                out.append((f"{prefix}[{i}].{ct}", "empty-content", "empty or whitespace-only content",
                            "non-empty text", "write the content or remove the turn pair", "warning"))
            if cutoff_len and isinstance(content, str):
                tokens += estimate_tokens(content) + MESSAGE_OVERHEAD_TOKENS
            if role == obs:
                pending = i if pending is None else pending
                continue
            if pending is not None:
                aligned.append(("observation", pending))
                pending = None
            if role not in mapping:
                out.append((f"{prefix}[{i}].{rt}", "unknown-role", f"role {role!r}",
                            "one of " + _names(user, asst, obs, func, sys_tag),
                            "LLaMA-Factory fails with a KeyError on unknown roles; map it in the entry's tags",
                            "error"))
                return out
            aligned.append((mapping[role], i))
        if pending is not None:
            out.append((f"{prefix}[{pending}]", "trailing-tool", "trailing tool messages", "an assistant turn after them",
                        "LLaMA-Factory drops tool messages that end the conversation", "warning"))
        for turn, (role, i) in enumerate(aligned):
            if role not in accept[turn & 1]:
                if role == "system":
                    msg, hint = f"system message at position {i}", "a system message is only allowed first"
                else:
                    msg, hint = f"role {role!r} at turn {turn}", "turns must alternate user/tool then assistant"
                out.append((f"{prefix}[{i}].{rt}", "role-alternation", msg,
                            "user or tool" if turn % 2 == 0 else "assistant (or tool_calls)", hint, "error"))
                break
        n = len(aligned)
        if n == 0:
            out.append((prefix, "empty-messages", "has no turns", "user/assistant turns", "remove the record", "error"))
        elif ranking != (n % 2 == 1):
            out.append((prefix, "message-count", f"{n} turns (tool messages merged)",
                        "an odd count" if ranking else "an even count ending with an assistant answer",
                        "add the missing answer or remove the trailing turn", "error"))
        kto_col = cols["kto_tag"] if spec.stage == "kto" else None
        if kto_col and n and rec.get(kto_col) is True and not msgs[aligned[-1][1]][ct] and \
                not msgs[aligned[-1][1]].get("tool_calls"):
            out.append(_kto_flip(f"{prefix}[{aligned[-1][1]}].{ct}"))
        if ranking and chosen and rejected:
            for col in (chosen, rejected):
                m = rec[col]
                if m[rt] not in (asst, func):
                    out.append((_p(col, rt), "chosen-rejected", f"role {m[rt]!r}", _names(asst, func),
                                "chosen and rejected are assistant answers", "error"))
        f = _tools_finding(rec, tools, True) if tools else None
        if f:
            out.append(f)
        if cutoff_len and tokens > cutoff_len:
            out.append(_too_long(tokens, cutoff_len))
        return out or None

    return rules
