"""Read a JobState value's ``phase`` and ``next_action_at_ms`` without decoding it all.

A restore folds every record of ``export.jobs`` into the store but only needs to know
whether each job is open and when a finished one falls due. A full decode costs about
25 µs a record (1M records: 25 s); walking the Avro body up to those two fields costs a
few. The walk follows the *writer* schema, compiled once per schema into straight-line
skip code. Anything the walk does not expect (a writer schema with a record or array before
those fields, an unknown enum symbol, a value cut short) falls back to a full decode,
which is the authority and raises DecodeError for values that are not a JobState.

Every JobState record the worker writes also carries the open peek's answer in a record
header (``OPEN_HEADER``, see ``open_header``): a restore reads that instead of walking
the value, when the value's writer schema is one it knows. Records without it (written
before it existed, or by another tool) are walked as before.

A value the walk reads may still fail a full decode later (trailing bytes, a corrupt
field after ``next_action_at_ms``): the store keeps values raw, and whoever decodes one
in full (loading open jobs, a cold lookup) handles that as an unreadable state.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from worker.codec import Codec, SchemaInfo
from worker.engine.model import JobState, Phase
from worker.errors import DecodeError

_STATE = "JobState"


# (phase, next_action_at_ms): a plain tuple, built a million times in a restore (a
# NamedTuple's constructor costs several times more).
Peeked = tuple[Phase, int]
# (phase, next_action_at_ms, vendor, status): what a restore keeps of an open job it does
# not decode yet (``worker.runtime.job_table``).
PeekedOpen = tuple[Phase, int, str, str]
_OPEN_FIELDS = ("vendor", "status")


class OpenPeek(Protocol):
    """``peek_open`` bound to a codec (``open_peeker``); ``head``: the record's
    ``OPEN_HEADER`` value, if it has one."""

    def __call__(self, value: bytes, head: bytes | None = None, /) -> PeekedOpen: ...


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


Walk = Callable[[bytes, int], tuple[Any, ...]]
# A peek for one codec's values: ``peek(value)``, or ``peek(value, header)`` with the
# record's ``OPEN_HEADER`` value (None: the record has none).
BoundPeek = Callable[..., tuple[Any, ...]]
_UNSEEN: Any = object()


def _compile(writer: SchemaInfo, captures: tuple[str, ...]) -> Walk | None:
    """Straight-line code that skips the writer's fields up to ``next_action_at_ms``
    (reading the string fields named in ``captures`` on the way), or None when its
    layout has something the walk does not handle. Generated rather than interpreted: a
    loop over steps costs ~9 µs a value, the straight line ~3 µs."""
    fields: Sequence[Mapping[str, Any]] = writer.parsed["fields"]
    names = [f["name"] for f in fields]
    if "phase" not in names or "next_action_at_ms" not in names:
        return None
    phase_at, due_at = names.index("phase"), names.index("next_action_at_ms")
    enum = fields[phase_at]["type"]
    if phase_at > due_at or fields[due_at]["type"] != "long" or not isinstance(enum, Mapping):
        return None
    captured = {names.index(name) if name in names else -1: name for name in captures}
    if any(at < 0 or at > due_at or fields[at]["type"] != "string" for at in captured):
        return None
    try:
        steps = [_step(f["type"]) for f in fields[:due_at]]
    except _Surprise:
        return None
    known = {p.value: p for p in Phase}
    lines = ["def walk(buf, pos):"]
    for i, step in enumerate(steps):
        if i == phase_at:
            lines += _PHASE
        elif i in captured:
            lines += _string(captured[i])
        else:
            lines += _code(step, i)
    lines += ["    due, pos = varint(buf, pos)", "    if pos > len(buf):", "        raise Surprise('cut short')"]
    lines += [f"    return (phase, due{''.join(', ' + name for name in captures)})"]
    namespace: dict[str, Any] = {
        "varint": _varint,
        "skip": _skip,
        "Surprise": _Surprise,
        "symbols": tuple(known.get(s) for s in enum["symbols"]),
        **{f"step_{i}": step for i, step in enumerate(steps)},
    }
    exec(compile("\n".join(lines), f"<peek {writer.name}>", "exec"), namespace)
    return namespace["walk"]  # type: ignore[no-any-return]


def _string(name: str) -> list[str]:
    """Lines reading one string field into the local ``name`` (a bad length or bad
    UTF-8 falls back to the full decode, which says what is wrong)."""
    return [
        "    n = buf[pos]",
        "    if n < 0x80:",  # a length under 64 (or a negative one, refused below)
        "        n = (n >> 1) ^ -(n & 1)",
        "        pos += 1",
        "    else:",
        "        n, pos = varint(buf, pos)",
        "    if n < 0 or pos + n > len(buf):",
        "        raise Surprise('string length')",
        f"    {name} = buf[pos:pos + n].decode()",
        "    pos += n",
    ]


# The phase: an enum index, one byte for any enum under 64 symbols.
_PHASE = [
    "    b = buf[pos]",
    "    phase = symbols[b >> 1] if b < 0x80 and not b & 1 else None",
    "    if phase is None:",
    "        raise Surprise('phase')",
    "    pos += 1",
]


def _code(step: Step, i: int, indent: str = "    ") -> list[str]:
    """Lines skipping one field: the common cases inline (a varint is skipped, not read;
    a length of one or two bytes is read in place), the rest via ``skip``."""
    kind, arg = step
    general = [f"{indent}    pos = skip(step_{i}, buf, pos)"]
    if kind == _BYTES:
        return [
            f"{indent}b = buf[pos]",
            f"{indent}if b < 0x80 and not b & 1:",  # a length under 64
            f"{indent}    pos += 1 + (b >> 1)",
            f"{indent}elif b >= 0x80 and buf[pos + 1] < 0x80:",  # under 8192
            f"{indent}    n = (b & 0x7F) | (buf[pos + 1] << 7)",
            f"{indent}    if n & 1:",
            f"{indent}        raise Surprise('negative length')",
            f"{indent}    pos += 2 + (n >> 1)",
            f"{indent}else:",
            *general,
        ]
    if kind == _VARINT:  # skipped to its last byte: its value is not needed
        return [f"{indent}while buf[pos] & 0x80:", f"{indent}    pos += 1", f"{indent}pos += 1"]
    if kind == _FIXED:
        return [f"{indent}pos += {arg}"]
    if kind == _UNION and len(arg) == 2 and arg[0] == (_NULL, None) and arg[1][0] in (_BYTES, _VARINT, _FIXED):
        # ["null", x]: branch 0 is one zero byte, branch 1 is the byte 2 and then x
        inner = [line.replace(f"step_{i}", f"step_{i}[1][1]") for line in _code(arg[1], i, indent + "    ")]
        return [
            f"{indent}b = buf[pos]",
            f"{indent}if b == 0:",
            f"{indent}    pos += 1",
            f"{indent}elif b == 2:",
            f"{indent}    pos += 1",
            *inner,
            f"{indent}else:",
            *general,
        ]
    if kind in (_UNION, _MAP):  # a null branch or an empty map is one zero byte
        return [f"{indent}if buf[pos] == 0:", f"{indent}    pos += 1", f"{indent}else:", *general]
    return [f"{indent}pos = skip(step_{i}, buf, pos)"]


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
        return pos + int(arg)
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


class _Peeker:
    """Walks values up to ``next_action_at_ms``, reading the fields in ``captures``; one
    walk compiled per writer schema, found by the value's framing. ``headed``: the peek
    takes the record's ``OPEN_HEADER`` too, and believes a well-formed one instead of
    walking (only for the open peek's captures, which the header carries)."""

    def __init__(self, captures: tuple[str, ...], *, headed: bool = False) -> None:
        self._captures = captures
        self._headed = headed
        self._walks: dict[bytes, Walk | None] = {}  # by writer fingerprint
        # One peek function per codec (the walk of each framing it has met is looked
        # up once per framing, not once per value), kept no longer than the codec.
        self._bound: weakref.WeakKeyDictionary[Codec, BoundPeek] = weakref.WeakKeyDictionary()
        # The last codec's: callers that peek one value at a time (the sweeper, the
        # transaction writer's job bodies) use one codec, and a WeakKeyDictionary
        # lookup costs as much as a third of a walk. A restore binds once instead.
        self._last: tuple[weakref.ref[Codec], BoundPeek] | None = None

    def __call__(self, value: bytes, codec: Codec) -> tuple[Any, ...]:
        return self.bind(codec)(value)

    def bind(self, codec: Codec) -> BoundPeek:
        """This peek for values of one codec: what a restore's fold calls, a million
        times, without finding the codec's walks again for each value."""
        last = self._last
        if last is not None and last[0]() is codec:
            return last[1]
        bound = self._bound.get(codec)
        if bound is None:
            bound = self._bound[codec] = self._make(weakref.ref(codec))
        self._last = (weakref.ref(codec), bound)
        return bound

    def _make(self, codec_ref: weakref.ref[Codec]) -> BoundPeek:
        # The codec is held weakly: the function is a value of the codec's own weak key.
        by_framing: dict[bytes, Walk | None] = {}  # the walk of each framing met
        headed = self._headed

        def peek(value: bytes, head: bytes | None = None) -> tuple[Any, ...]:
            if not value:
                raise DecodeError("not_avro", "empty message value")
            header = 10 if value[0] != 0 else 5  # single-object vs registry framing
            walk = by_framing.get(value[:header], _UNSEEN)
            if walk is _UNSEEN:
                # Raises for a registry schema not fetched yet, header or not: the value
                # must be readable when its job is decoded later.
                walk = by_framing[value[:header]] = self._walk(value, _live(codec_ref))
            if walk is not None:
                if head is not None and headed:
                    found = read_open_header(head)
                    if found is not None:
                        return found
                try:
                    return walk(value, header)
                except (_Surprise, IndexError, UnicodeDecodeError):
                    pass
            return self._full(value, _live(codec_ref))

        return peek

    def _walk(self, value: bytes, codec: Codec) -> Walk | None:
        writer = codec.writer(_STATE, value)
        if writer.fingerprint not in self._walks:
            self._walks[writer.fingerprint] = _compile(writer, self._captures) if writer.name == _STATE else None
        return self._walks[writer.fingerprint]

    def _full(self, value: bytes, codec: Codec) -> tuple[Any, ...]:
        record = codec.decode(_STATE, value)
        try:
            found = (Phase(record["phase"]), int(record.get("next_action_at_ms", 0)))
            return found + tuple(str(record[name]) for name in self._captures)
        except (KeyError, ValueError) as exc:
            raise DecodeError("invalid_state", f"not a valid JobState: {exc!r}") from None


def _live(codec_ref: weakref.ref[Codec]) -> Codec:
    codec = codec_ref()
    if codec is None:  # only a caller that dropped its codec could hold the function
        raise RuntimeError("the codec of this peek is gone")
    return codec


_peek_due = _Peeker(())
_peek_open = _Peeker(_OPEN_FIELDS, headed=True)
_peek_body = _Peeker(("job_json",))


def peek(value: bytes, codec: Codec) -> Peeked:
    """The phase and next action time of one ``export.jobs`` value (not a tombstone);
    DecodeError when it is not a JobState we can read. Synchronous: a registry schema id
    the codec has not cached yet is DecodeError(unknown_schema) here, so a caller that
    may meet one fetches it first (``codec.decode_async``)."""
    return _peek_due(value, codec)  # type: ignore[return-value]


def peek_open(value: bytes, codec: Codec) -> PeekedOpen:
    """``peek`` and the job's vendor and status: what a restore keeps of an open job it
    leaves encoded until it is needed."""
    return _peek_open(value, codec)  # type: ignore[return-value]


def open_peeker(codec: Codec) -> OpenPeek:
    """``peek_open`` bound to one codec: ``open_peeker(codec)(value)``, or
    ``open_peeker(codec)(value, header)`` with the record's ``OPEN_HEADER`` value."""
    return _peek_open.bind(codec)  # type: ignore[return-value]


def peek_body(value: bytes, codec: Codec) -> str:
    """The job body (``job_json``) of one ``export.jobs`` value, without decoding the
    rest: a trimmed job's records carry the full body, read back from the store."""
    return str(_peek_body(value, codec)[2])


# ---- the open peek, carried in a record header ------------------------------------------
# Version 1: version (1 byte), phase (1 byte: its index in _HEADER_PHASES, fixed by the
# version, not by the Avro enum), next_action_at_ms (8 bytes, signed, big-endian), then
# vendor and status, each as a length byte and that many bytes of UTF-8.
OPEN_HEADER = "export-worker.open-peek"
_HEADER_VERSION = 1
_HEADER_PHASES = (Phase.PENDING, Phase.SUBMITTING, Phase.ACTIVE, Phase.DONE)
_HEADER_PHASE_BYTE = {phase: i for i, phase in enumerate(_HEADER_PHASES)}
_HEADER_FIXED = struct.Struct(">BBq")
_HEADER_TEXT_MAX = 255


def open_header(state: JobState) -> bytes | None:
    """What the open peek would read of ``state``'s record, as an ``OPEN_HEADER`` value;
    None when a text does not fit its length byte (the record then goes without one)."""
    return open_peek_header(state.phase, state.next_action_at_ms, state.vendor, state.status.value)


def open_peek_header(phase: Phase, due_ms: int, vendor: str, status: str) -> bytes | None:
    """``open_header`` from the four fields it carries."""
    vendor_bytes, status_bytes = vendor.encode(), status.encode()
    if len(vendor_bytes) > _HEADER_TEXT_MAX or len(status_bytes) > _HEADER_TEXT_MAX:
        return None
    phase_byte = _HEADER_PHASE_BYTE.get(phase)
    if phase_byte is None:  # a phase version 1 has no byte for: the value is walked
        return None
    try:
        fixed = _HEADER_FIXED.pack(_HEADER_VERSION, phase_byte, due_ms)
    except struct.error:  # not a long: the value cannot be written either
        return None
    return b"".join((fixed, bytes((len(vendor_bytes),)), vendor_bytes, bytes((len(status_bytes),)), status_bytes))


def state_headers(state: JobState) -> list[tuple[str, bytes]] | None:
    """The record headers of ``state``'s export.jobs record."""
    head = open_header(state)
    return None if head is None else [(OPEN_HEADER, head)]


def read_open_header(head: bytes) -> PeekedOpen | None:
    """The open peek an ``OPEN_HEADER`` value carries; None for anything but a whole,
    well-formed version 1 header (the value is then walked instead)."""
    try:
        version, phase, due = _HEADER_FIXED.unpack_from(head)
        if version != _HEADER_VERSION:
            return None
        # A partition's headers differ in their fixed part; their texts are a few
        # vendor/status pairs, each read once (a restore reads ~100,000 headers).
        tail = head[_HEADER_FIXED.size :]
        texts = _header_texts.get(tail)
        if texts is None:
            texts = _read_header_texts(tail)
            if texts is None:
                return None
            if len(_header_texts) < _HEADER_TEXTS_CACHED:
                _header_texts[tail] = texts
        return (_HEADER_PHASES[phase], due, texts[0], texts[1])
    except (struct.error, IndexError):
        return None


# Vendor and status texts by the header bytes that carry them; bounded, as headers come
# from the topic: past the bound a pair is read each time.
_HEADER_TEXTS_CACHED = 1024
_header_texts: dict[bytes, tuple[str, str]] = {}


def _read_header_texts(tail: bytes) -> tuple[str, str] | None:
    """(vendor, status) from a header's length-prefixed texts; None when they are not
    exactly two well-formed texts."""
    try:
        end = 1 + tail[0]
        status_end = end + 1 + tail[end]
        if status_end != len(tail):
            return None
        return tail[1:end].decode(), tail[end + 1 : status_end].decode()
    except (IndexError, UnicodeDecodeError):
        return None
