"""Read a JobState value's ``phase`` and ``next_action_at_ms`` without decoding it all.

A restore folds every record of ``export.jobs`` into the store but only needs to know
whether each job is open and when a finished one falls due. A full decode costs about
25 µs a record (1M records: 25 s); walking the Avro body up to those two fields costs a
few. The walk follows the *writer* schema, compiled once per schema into a list of skip
steps. Anything the walk does not expect (a writer schema with a record or array before
those fields, an unknown enum symbol, a value cut short) falls back to a full decode,
which is the authority and raises DecodeError for values that are not a JobState.

A value the walk reads may still fail a full decode later (trailing bytes, a corrupt
field after ``next_action_at_ms``): the store keeps values raw, and whoever decodes one
in full (loading open jobs, a cold lookup) handles that as an unreadable state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.codec import Codec, SchemaInfo
from worker.engine.model import Phase
from worker.errors import DecodeError

_STATE = "JobState"


@dataclass(frozen=True, slots=True)
class Peeked:
    phase: Phase
    next_action_at_ms: int

    @property
    def open(self) -> bool:
        return self.phase is not Phase.DONE


class _Surprise(Exception):
    """The fast walk met something it does not handle: decode in full instead."""


# Skip steps: (kind, argument). Kinds:
_BYTES, _VARINT, _FIXED, _MAP, _UNION, _NULL = range(6)
Step = tuple[int, Any]


def _step(node: Any) -> Step:
    """The skip step for a (parsed, writer) schema node; _Surprise when there is none."""
    if isinstance(node, Mapping):
        kind = node["type"]
        if kind == "enum":
            return (_VARINT, None)
        if kind == "map":
            return (_MAP, _step(node["values"]))
        if isinstance(kind, str) and "logicalType" in node:
            return _step(kind)
        raise _Surprise(f"no fast skip for {kind}")
    if isinstance(node, list):
        return (_UNION, tuple(_step(branch) for branch in node))
    simple = {"null": (_NULL, None), "boolean": (_FIXED, 1), "int": (_VARINT, None), "long": (_VARINT, None)}
    simple |= {"float": (_FIXED, 4), "double": (_FIXED, 8), "string": (_BYTES, None), "bytes": (_BYTES, None)}
    if node in simple:
        return simple[node]
    raise _Surprise(f"no fast skip for {node}")


@dataclass(frozen=True, slots=True)
class _Plan:
    steps: tuple[Step, ...]  # one per field up to and including next_action_at_ms
    phase_at: int
    due_at: int
    symbols: tuple[Phase | None, ...]  # the writer's JobPhase symbols, as phases


def _plan(writer: SchemaInfo) -> _Plan | None:
    fields: Sequence[Mapping[str, Any]] = writer.parsed["fields"]
    names = [f["name"] for f in fields]
    if "phase" not in names or "next_action_at_ms" not in names:
        return None
    phase_at, due_at = names.index("phase"), names.index("next_action_at_ms")
    enum = fields[phase_at]["type"]
    if phase_at > due_at or fields[due_at]["type"] != "long" or not isinstance(enum, Mapping):
        return None
    try:
        steps = tuple(_step(f["type"]) for f in fields[: due_at + 1])
    except _Surprise:
        return None
    known = {p.value: p for p in Phase}
    return _Plan(steps, phase_at, due_at, tuple(known.get(s) for s in enum["symbols"]))


_plans: dict[bytes, _Plan | None] = {}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    byte = buf[pos]
    if byte < 0x80:  # most numbers and lengths fit one byte
        return (byte >> 1) ^ -(byte & 1), pos + 1
    result, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = buf[pos]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), pos + 1
        shift += 7
        if shift > 63:
            raise _Surprise("varint longer than 10 bytes")


def _skip(step: Step, buf: bytes, pos: int) -> int:
    kind, arg = step
    if kind == _BYTES:
        size, pos = _varint(buf, pos)
        if size < 0:
            raise _Surprise("negative length")
        return pos + size
    if kind == _VARINT:
        return _varint(buf, pos)[1]
    if kind == _UNION:
        branch, pos = _varint(buf, pos)
        if branch < 0:
            raise _Surprise("negative union branch")
        return _skip(arg[branch], buf, pos)
    if kind == _FIXED:
        return pos + arg
    if kind == _NULL:
        return pos
    while True:  # _MAP: blocks of entries, ended by an empty block
        count, pos = _varint(buf, pos)
        if count == 0:
            return pos
        if count < 0:  # a block that gives its size in bytes: skip it whole
            size, pos = _varint(buf, pos)
            pos += size
            continue
        for _ in range(count):
            pos = _skip((_BYTES, None), buf, pos)
            pos = _skip(arg, buf, pos)


def _walk(plan: _Plan, buf: bytes, pos: int) -> Peeked:
    phase: Phase | None = None
    for i in range(plan.due_at):
        if i == plan.phase_at:
            index, pos = _varint(buf, pos)
            if index < 0:
                raise _Surprise("negative enum index")
            phase = plan.symbols[index]
        else:
            pos = _skip(plan.steps[i], buf, pos)
    due, pos = _varint(buf, pos)
    if phase is None or pos > len(buf):
        raise _Surprise("unknown phase symbol, or value cut short")
    return Peeked(phase, due)


def peek(value: bytes, codec: Codec) -> Peeked:
    """The phase and next action time of one ``export.jobs`` value (not a tombstone);
    DecodeError when it is not a JobState we can read."""
    writer = codec.writer(_STATE, value)
    key = writer.fingerprint
    if key not in _plans:
        _plans[key] = _plan(writer) if writer.name == _STATE else None
    plan = _plans[key]
    if plan is not None:
        header = 10 if value[0] != 0 else 5  # single-object vs registry framing
        try:
            return _walk(plan, value, header)
        except (_Surprise, IndexError):
            pass
    return _full(value, codec)


def _full(value: bytes, codec: Codec) -> Peeked:
    record = codec.decode(_STATE, value)
    try:
        return Peeked(Phase(record["phase"]), int(record.get("next_action_at_ms", 0)))
    except (KeyError, ValueError) as exc:
        raise DecodeError("invalid_state", f"not a valid JobState: {exc!r}") from None
