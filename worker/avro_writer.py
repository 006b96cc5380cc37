"""Avro binary encoders compiled from a schema: straight-line Python per record type.

fastavro's writer walks the schema for every record it writes; the worker writes a few
records per request (states, status events, files), and that walk was most of their cost.
``compile_writer`` turns a schema into one function that writes a record of it with no
walk at all, for the shapes our schemas use: primitives, enums, records, maps, arrays and
unions of null with one other type (a record in such a union may come as fastavro's
``(name, fields)`` pair). A schema with anything else gets no compiled writer.

A compiled writer raises on any value it does not write exactly as fastavro would (a
datetime for a timestamp, a number out of an int's range, an unknown enum symbol...):
``Codec.encode`` then hands the record to fastavro, which writes it or says what is wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

RecordWriter = Callable[[Mapping[str, Any]], bytes]

_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_SMALL = [bytes([n]) for n in range(128)]


def write_long(n: int) -> bytes:
    """Zig-zag varint, as Avro writes ``int`` and ``long``."""
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise OverflowError(f"{n} does not fit an Avro long")
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def write_int(n: int) -> bytes:
    if not _INT_MIN <= n <= _INT_MAX:
        raise OverflowError(f"{n} does not fit an Avro int")
    return write_long(n)


class Unsupported(Exception):
    """A schema shape the compiler leaves to fastavro."""


class _Compiler:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {
            "_long": write_long,
            "_int": write_int,
            "_float": struct.Struct("<f").pack,
            "_double": struct.Struct("<d").pack,
            "_small": _SMALL,
        }
        self._names = 0
        self.named: dict[str, Any] = {}  # named types (full name) as first defined
        self._open: set[str] = set()  # records being written: a reference to one is recursion

    def name(self, prefix: str) -> str:
        self._names += 1
        return f"{prefix}{self._names}"

    def constant(self, value: Any) -> str:
        name = self.name("_c")
        self.constants[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def value(self, schema: Any, var: str, indent: int) -> None:
        """Lines that write the value in ``var`` as ``schema``."""
        if isinstance(schema, list):
            self.union(schema, var, indent)
            return
        if isinstance(schema, str) and schema in self.named:  # a named type defined earlier
            schema = self.named[schema]
        kind = schema if isinstance(schema, str) else schema["type"]
        if isinstance(schema, Mapping) and "name" in schema:
            self.named.setdefault(schema["name"], schema)
        if kind == "null":
            self.emit(indent, f"if {var} is not None: raise TypeError('not null')")
        elif kind == "boolean":
            self.emit(indent, f"a(b'\\x01' if {var} else b'\\x00')")
        elif kind == "int":
            self.emit(indent, f"a(_int({var}))")
        elif kind == "long":
            self.emit(indent, f"a(_long({var}))")
        elif kind in ("float", "double"):
            self.emit(indent, f"a(_{kind}({var}))")
        elif kind == "string":
            encoded, size = self.name("e"), self.name("n")
            self.emit(indent, f"{encoded} = {var}.encode()")
            self.emit(indent, f"{size} = len({encoded})")
            # A length below 64 is one byte: zig-zag doubles it.
            self.emit(indent, f"a(_small[{size} << 1] if {size} < 64 else _long({size}))")
            self.emit(indent, f"a({encoded})")
        elif kind == "bytes":
            self.emit(indent, f"if type({var}) is not bytes: raise TypeError('not bytes')")
            self.emit(indent, f"a(_long(len({var})))")
            self.emit(indent, f"a({var})")
        elif kind == "enum":
            symbols = self.constant({s: write_long(i) for i, s in enumerate(schema["symbols"])})
            self.emit(indent, f"a({symbols}[{var}])")
        elif kind == "record":
            self.record(schema, var, indent)
        elif kind in ("map", "array"):
            self.block(schema, kind, var, indent)
        else:
            raise Unsupported(kind)

    def record(self, schema: Mapping[str, Any], var: str, indent: int) -> None:
        name = schema["name"]
        if name in self._open:
            raise Unsupported(f"recursive record {name}")
        self._open.add(name)
        for f in schema["fields"]:
            field = self.name("f")
            default = f"{self.constant(f['default'])}" if "default" in f else "None"
            self.emit(indent, f"{field} = {var}.get({f['name']!r}, {default})")
            self.value(f["type"], field, indent)
        self._open.discard(name)

    def block(self, schema: Mapping[str, Any], kind: str, var: str, indent: int) -> None:
        self.emit(indent, f"if {var}:")
        self.emit(indent + 1, f"a(_long(len({var})))")
        item = self.name("i")
        if kind == "map":
            key = self.name("k")
            self.emit(indent + 1, f"for {key}, {item} in {var}.items():")
            self.value("string", key, indent + 2)
            self.value(schema["values"], item, indent + 2)
        else:
            self.emit(indent + 1, f"for {item} in {var}:")
            self.value(schema["items"], item, indent + 2)
        self.emit(indent, "a(b'\\x00')")

    def union(self, branches: list[Any], var: str, indent: int) -> None:
        if len(branches) != 2 or "null" not in branches:
            raise Unsupported("a union other than null and one type")
        null_index = branches.index("null")
        other = branches[1 - null_index]
        self.emit(indent, f"if {var} is None:")
        self.emit(indent + 1, f"a({self.constant(write_long(null_index))})")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"a({self.constant(write_long(1 - null_index))})")
        if isinstance(other, Mapping) and other.get("type") == "record":
            # fastavro's tuple notation: (full name, fields)
            self.emit(indent + 1, f"if type({var}) is tuple:")
            self.emit(indent + 2, f"if {var}[0] != {other['name']!r}: raise ValueError('another record')")
            self.emit(indent + 2, f"{var} = {var}[1]")
        self.value(other, var, indent + 1)


def compile_writer(parsed: Mapping[str, Any]) -> RecordWriter | None:
    """A writer of records of ``parsed`` (a schema as ``fastavro.parse_schema`` gives it,
    named types expanded where first used), or None when it has a shape left to fastavro."""
    if not isinstance(parsed, Mapping) or parsed.get("type") != "record":
        return None
    compiler = _Compiler()
    compiler.emit(1, "p = []")
    compiler.emit(1, "a = p.append")
    try:
        compiler.record(parsed, "r", 1)
    except (Unsupported, KeyError, TypeError):
        return None
    compiler.emit(1, "return b''.join(p)")
    # Helpers and constants bound as defaults: locals, not global lookups.
    bound = ", ".join(f"{name}={name}" for name in compiler.constants)
    source = "\n".join([f"def write(r, *, {bound}):", *compiler.lines])
    namespace = dict(compiler.constants)
    exec(source, namespace)  # the source is generated above from the schema alone
    writer: RecordWriter = namespace["write"]
    return writer
