"""Avro encoding of our records on the wire.

Two framings, chosen per message by its first byte when decoding:

* Avro single-object encoding (the default): ``C3 01`` + the 8-byte little-endian
  CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form + the body.
* Confluent Schema Registry framing (when a registry URL is set): ``00`` + the 4-byte
  big-endian schema id + the body.

A writer schema other than ours is resolved against ours (Avro schema resolution), so
older or newer producers with compatible schemas are read correctly.

Some Avro libraries fingerprint a schema with logical types differently from the
specification (and from Java and fastavro), though they write the same body: each of our
schemas is also accepted under the fingerprints those libraries give it (``NONSTANDARD_FORMS``).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import fastavro
from fastavro.schema import to_parsing_canonical_form

from worker.avro_writer import RecordWriter, compile_writer
from worker.errors import DecodeError, RegistryUnavailable

SOE_MAGIC = b"\xc3\x01"


def epoch_ms(value: dt.datetime | int) -> int:
    """A timestamp-millis field as fastavro decodes it (an aware datetime), or already
    epoch milliseconds, as epoch milliseconds."""
    return int(value.timestamp() * 1000) if isinstance(value, dt.datetime) else int(value)


def optional_epoch_ms(value: dt.datetime | int | None) -> int | None:
    return None if value is None else epoch_ms(value)


REGISTRY_MAGIC = 0
RECORD_NAMES = ("ExportRequested", "JobStatusChanged", "FileReady", "DeadLetter", "JobState")
NAMESPACE = "export.v1"

_EMPTY64 = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The CRC-64-AVRO fingerprint from the Avro specification."""
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


# Parsing Canonical Forms that Avro libraries compute for a primitive with a logical type,
# e.g. {"type": "long", "logicalType": "timestamp-millis"}, where the specification says "long":
#   wrapped: {"type":"long"}: Apache Avro for Python 1.10-1.12 (checked on 1.12.2) and Rust
#       apache-avro 0.17+ (AVRO-4004 strips logicalType but keeps the object).
#   logical: {"type":"long","logicalType":"timestamp-millis"}: Rust apache-avro before 0.17.
CanonicalForm = Literal["spec", "wrapped", "logical"]
NONSTANDARD_FORMS: dict[CanonicalForm, str] = {
    "wrapped": "Apache Avro for Python / Rust apache-avro 0.17+",
    "logical": "Rust apache-avro before 0.17",
}
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def canonical_form(schema: Any, form: CanonicalForm = "spec") -> str:
    """The Parsing Canonical Form of a schema as JSON (``spec``), or as a library with a
    known deviation computes it (see ``NONSTANDARD_FORMS``)."""
    return _pcf(schema, "", form)


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _pcf(node: Any, namespace: str, form: CanonicalForm) -> str:
    if isinstance(node, str):
        return json.dumps(node if node in _PRIMITIVES else _fullname(node, namespace), ensure_ascii=False)
    if isinstance(node, list):
        return "[" + ",".join(_pcf(branch, namespace, form) for branch in node) + "]"
    kind = node["type"]
    if not isinstance(kind, str):
        return _pcf(kind, namespace, form)
    if kind in _PRIMITIVES:
        return _pcf_primitive(node, kind, form)
    parts = []
    if kind in ("record", "enum", "fixed"):
        name = _fullname(node["name"], node.get("namespace") or namespace)
        namespace = name.rpartition(".")[0]
        parts.append(f'"name":{json.dumps(name, ensure_ascii=False)}')
    parts.append(f'"type":"{kind}"')
    if kind == "record":
        fields = (
            f'{{"name":{json.dumps(f["name"], ensure_ascii=False)},"type":{_pcf(f["type"], namespace, form)}}}'
            for f in node["fields"]
        )
        parts.append(f'"fields":[{",".join(fields)}]')
    elif kind == "enum":
        parts.append(f'"symbols":{json.dumps(node["symbols"], ensure_ascii=False, separators=(",", ":"))}')
    elif kind == "array":
        parts.append(f'"items":{_pcf(node["items"], namespace, form)}')
    elif kind == "map":
        parts.append(f'"values":{_pcf(node["values"], namespace, form)}')
    elif kind == "fixed":
        parts.append(f'"size":{int(node["size"])}')
    return "{" + ",".join(parts) + "}"


def _pcf_primitive(node: Mapping[str, Any], kind: str, form: CanonicalForm) -> str:
    if form == "spec" or "logicalType" not in node:
        return f'"{kind}"'
    if form == "wrapped":
        return f'{{"type":"{kind}"}}'
    extra = "".join(f',"{k}":{json.dumps(node[k])}' for k in ("logicalType", "precision", "scale") if k in node)
    return f'{{"type":"{kind}"{extra}}}'


def schemas_dir() -> Path:
    """The folder holding the ``.avsc`` files: the repository's, else the installed copy."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "schemas", here / "schemas"):
        if (candidate / "ExportRequested.avsc").exists():
            return candidate
    raise FileNotFoundError("schemas/*.avsc not found next to the worker package")


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    name: str
    raw: Mapping[str, Any]
    parsed: Any
    canonical: str
    fingerprint: bytes  # 8 bytes, little-endian, as written after C3 01
    record_unions: bool  # has a union of several records (decoded as (name, record) pairs)
    write: RecordWriter | None  # the schema's compiled writer (``worker.avro_writer``), if it has one


def _has_record_union(node: Any) -> bool:
    if isinstance(node, list):
        records = [b for b in node if isinstance(b, dict) and b.get("type") == "record"]
        return len(records) > 1 or any(_has_record_union(b) for b in node)
    if isinstance(node, dict):
        return any(_has_record_union(v) for k, v in node.items() if k in ("type", "fields", "items", "values"))
    return False


def _info(name: str, raw: Mapping[str, Any]) -> SchemaInfo:
    parsed = fastavro.parse_schema(dict(raw), _write_hint=True)
    canonical = to_parsing_canonical_form(parsed)
    fp = crc64_avro(canonical.encode()).to_bytes(8, "little")
    return SchemaInfo(name, raw, parsed, canonical, fp, _has_record_union(dict(raw)), compile_writer(parsed))


def fingerprint_hex(fingerprint: bytes) -> str:
    """An 8-byte little-endian fingerprint as the 64-bit number Java prints, in hex."""
    return fingerprint[::-1].hex()


def _history_order(path: Path) -> tuple[str, int]:
    """``JobState.10.avsc`` after ``JobState.9.avsc``."""
    name, _, rest = path.name.partition(".")
    version = rest.split(".", 1)[0]
    return name, int(version) if version.isdigit() else -1


class SchemaSet:
    """Our schemas by short name, plus every writer schema we can resolve from: the
    earlier versions kept in ``schemas/history/<Name>.<version>.avsc``, so a new worker
    reads the state and requests an older one wrote (rolling upgrades). Each is accepted
    under its specification fingerprint and the ones ``NONSTANDARD_FORMS`` give it."""

    def __init__(self, folder: Path | None = None) -> None:
        folder = folder or schemas_dir()
        self.by_name: dict[str, SchemaInfo] = {}
        self.by_fingerprint: dict[bytes, SchemaInfo] = {}
        # name -> (fingerprint, which schema and canonical form), for error messages
        self.accepted: dict[str, list[tuple[bytes, str]]] = {}
        for name in RECORD_NAMES:
            raw = json.loads((folder / f"{name}.avsc").read_text())
            info = _info(name, raw)
            self.by_name[name] = info
            self._accept(info, raw, f"{name}.avsc")
        # name -> its newest earlier version: what is written while the fleet may still
        # run workers that do not know the current one (see ``Codec.encode``).
        self.previous: dict[str, SchemaInfo] = {}
        for old in sorted((folder / "history").glob("*.avsc"), key=_history_order):
            name = old.name.split(".", 1)[0]
            if name in self.by_name:
                self.previous[name] = self.add_writer(name, json.loads(old.read_text()), label=f"history/{old.name}")

    def add_writer(self, name: str, raw: Mapping[str, Any], *, label: str = "another version") -> SchemaInfo:
        """Accept data written with another version of one of our schemas."""
        info = _info(name, raw)
        self._accept(info, raw, label)
        return info

    def _accept(self, info: SchemaInfo, raw: Mapping[str, Any], label: str) -> None:
        accepted = self.accepted.setdefault(info.name, [])
        # A schema's own fingerprint is never shadowed by another's nonstandard one.
        if self.by_fingerprint.setdefault(info.fingerprint, info) is info:
            accepted.append((info.fingerprint, label))
        for form, libraries in NONSTANDARD_FORMS.items():
            fingerprint = crc64_avro(canonical_form(raw, form).encode()).to_bytes(8, "little")
            if fingerprint not in self.by_fingerprint:
                self.by_fingerprint[fingerprint] = info
                accepted.append((fingerprint, f"{label} as {libraries} fingerprint it"))

    def unknown_fingerprint(self, name: str, fingerprint: bytes) -> str:
        """Why a single-object encoded ``name`` with this writer fingerprint is refused."""
        known = "; ".join(f"{fingerprint_hex(fp)} ({label})" for fp, label in self.accepted.get(name, []))
        return (
            f"unknown writer schema fingerprint: got {fingerprint_hex(fingerprint)} (CRC-64-AVRO); "
            f"{name} is read with {known}"
        )


class SchemaRegistry(Protocol):
    """What the codec needs from a schema registry (see ``worker.registry``)."""

    def schema_id_for(self, subject: str) -> int: ...

    def cached_schema(self, schema_id: int) -> Mapping[str, Any] | None: ...

    async def fetch_schema(self, schema_id: int) -> Mapping[str, Any]: ...


class Codec:
    """Encode our records and decode them from either framing.

    Args:
        schemas: our schemas.
        registry: when given, records are written with Confluent framing under the
            subject ``<topic>-value``; otherwise with single-object encoding.
    """

    def __init__(self, schemas: SchemaSet | None = None, registry: SchemaRegistry | None = None) -> None:
        self.schemas = schemas or SchemaSet()
        self.registry = registry
        self._registry_writers: dict[int, SchemaInfo] = {}

    # -- encoding -------------------------------------------------------------------
    def encode(
        self, name: str, record: Mapping[str, Any], *, topic: str | None = None, writer: SchemaInfo | None = None
    ) -> bytes:
        """``record`` as ``name``, written with our current schema, or with ``writer`` (an
        earlier version: fields it lacks are left out) under single-object encoding. With
        a registry the current schema is always written: readers fetch it by id."""
        info = self.schemas.by_name[name] if writer is None or self.registry is not None else writer
        if self.registry is not None and topic is not None:
            header = struct.pack(">bI", REGISTRY_MAGIC, self.registry.schema_id_for(f"{topic}-value"))
        else:
            header = SOE_MAGIC + info.fingerprint
        if info.write is not None:
            try:
                return header + info.write(record)
            except Exception:  # a value the compiled writer leaves to fastavro (see worker.avro_writer)
                pass
        buf = io.BytesIO()
        buf.write(header)
        fastavro.schemaless_writer(buf, info.parsed, record)
        return buf.getvalue()

    # -- decoding -------------------------------------------------------------------
    def decode(self, name: str, data: bytes | None) -> dict[str, Any]:
        """Decode without network I/O; raises DecodeError(unknown_schema) for an
        uncached registry id (use ``decode_async`` to fetch it)."""
        writer = self._writer_for(name, data)
        return self._read(name, writer, data)  # type: ignore[arg-type]

    def writer(self, name: str, data: bytes | None) -> SchemaInfo:
        """The schema ``data`` was written with, read from its framing, without decoding
        the body; DecodeError as ``decode`` raises it."""
        return self._writer_for(name, data)

    async def decode_async(self, name: str, data: bytes | None) -> dict[str, Any]:
        try:
            return self.decode(name, data)
        except _NeedsFetch as need:
            await self._fetch_writer(name, need.schema_id)
            return self.decode(name, data)

    def _writer_for(self, name: str, data: bytes | None) -> SchemaInfo:
        if not data:
            raise DecodeError("not_avro", "empty message value")
        first = data[0]
        if first == SOE_MAGIC[0]:
            if len(data) < 10 or data[1] != SOE_MAGIC[1]:
                raise DecodeError("not_avro", "truncated single-object encoding header")
            fp = data[2:10]
            writer = self.schemas.by_fingerprint.get(fp)
            if writer is None:
                raise DecodeError("unknown_schema", self.schemas.unknown_fingerprint(name, fp))
            return writer
        if first == REGISTRY_MAGIC:
            if len(data) < 5:
                raise DecodeError("not_avro", "truncated schema registry header")
            (schema_id,) = struct.unpack(">I", data[1:5])
            if self.registry is None:
                raise DecodeError(
                    "unknown_schema",
                    f"schema registry framing (schema id {schema_id}) but no registry is configured",
                )
            writer = self._registry_writers.get(schema_id)
            if writer is None:
                raw = self.registry.cached_schema(schema_id)
                if raw is None:
                    raise _NeedsFetch(schema_id)
                writer = self._remember(name, schema_id, raw)
            return writer
        raise DecodeError("not_avro", f"first byte 0x{first:02x} is neither C3 (single-object) nor 00 (registry)")

    async def _fetch_writer(self, name: str, schema_id: int) -> None:
        assert self.registry is not None
        try:
            raw = await self.registry.fetch_schema(schema_id)
        except Exception as exc:  # the registry client raises its own types
            status = getattr(exc, "http_status_code", None)
            if status == 404:
                raise DecodeError("unknown_schema", f"schema id {schema_id} not found in the registry") from None
            # Not an answer about the schema: the registry is down or failing. Decoding
            # must be retried later, not turned into a dead letter.
            raise RegistryUnavailable(f"schema registry unavailable fetching id {schema_id}: {exc}") from None
        self._remember(name, schema_id, raw)

    def _remember(self, name: str, schema_id: int, raw: Mapping[str, Any]) -> SchemaInfo:
        full = f"{raw.get('namespace', '')}.{raw.get('name', '')}" if isinstance(raw, Mapping) else ""
        if full != f"{NAMESPACE}.{name}":
            raise DecodeError("schema_mismatch", f"schema id {schema_id} is {full or 'not a record'}, not {name}")
        try:
            info = _info(name, raw)
        except Exception as exc:
            raise DecodeError("unknown_schema", f"schema id {schema_id} does not parse: {exc}") from exc
        self._registry_writers[schema_id] = info
        return info

    def _read(self, name: str, writer: SchemaInfo, data: bytes) -> dict[str, Any]:
        reader = self.schemas.by_name[name]
        header = 10 if data[0] == SOE_MAGIC[0] else 5
        if writer.name != name:
            raise DecodeError("schema_mismatch", f"record is a {writer.name}, expected {name}")
        stream = io.BytesIO(data)
        stream.seek(header)
        try:
            # A union of several records (the request's `job`) comes back as a
            # (full name, record) pair; nullable single records stay plain.
            record = fastavro.schemaless_reader(
                stream,
                writer.parsed,
                None if writer.fingerprint == reader.fingerprint else reader.parsed,
                return_record_name=reader.record_unions,
                return_record_name_override=reader.record_unions,
            )
        except OverflowError as exc:
            # Also what a well-formed timestamp-millis beyond what datetime holds raises.
            raise DecodeError(
                "not_avro", f"corrupt {name} body, or a timestamp outside years 1-9999: {type(exc).__name__}: {exc}"
            ) from exc
        except Exception as exc:  # fastavro raises many types for corrupt bodies
            raise DecodeError("not_avro", f"corrupt {name} body: {type(exc).__name__}: {exc}") from exc
        if stream.tell() != len(data):
            raise DecodeError("not_avro", f"{len(data) - stream.tell()} trailing bytes after the {name} record")
        if not isinstance(record, dict):
            raise DecodeError("not_avro", f"decoded {name} is not a record")
        return record


class _NeedsFetch(DecodeError):
    def __init__(self, schema_id: int) -> None:
        super().__init__("unknown_schema", f"schema id {schema_id} not cached")
        self.schema_id = schema_id
