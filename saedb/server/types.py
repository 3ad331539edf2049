"""DuckDB types as Postgres types: OIDs, and values in Postgres text and binary formats.

Each DuckDB column type maps to the Postgres type a driver should see (LIST -> the element's
array type, JSON -> json, REAL -> float4, DOUBLE -> float8, HUGEINT -> numeric, STRUCT and
MAP -> json text, ...). ``encoder(oid, binary)`` gives the function that writes one value;
``decode_param`` reads a bound parameter sent by a client.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import struct
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

# Postgres type OIDs (pg_type.oid), with their array types.
BOOL, BYTEA, INT8, INT2, INT4, TEXT, OID, JSON = 16, 17, 20, 21, 23, 25, 26, 114
FLOAT4, FLOAT8, UNKNOWN, VARCHAR, DATE, TIME = 700, 701, 705, 1043, 1082, 1083
TIMESTAMP, TIMESTAMPTZ, INTERVAL, NUMERIC, UUID, NAME, CHAR = 1114, 1184, 1186, 1700, 2950, 19, 18
BPCHAR, TIMETZ, JSONB = 1042, 1266, 3802
ARRAY_OF = {
    BOOL: 1000,
    BYTEA: 1001,
    INT2: 1005,
    INT4: 1007,
    TEXT: 1009,
    INT8: 1016,
    FLOAT4: 1021,
    FLOAT8: 1022,
    VARCHAR: 1015,
    DATE: 1182,
    TIME: 1183,
    TIMESTAMP: 1115,
    TIMESTAMPTZ: 1185,
    INTERVAL: 1187,
    NUMERIC: 1231,
    UUID: 2951,
    JSON: 199,
    JSONB: 3807,
    NAME: 1003,
    OID: 1028,
    CHAR: 1002,
}
ELEMENT_OF = {v: k for k, v in ARRAY_OF.items()}
TYPE_NAMES = {
    BOOL: "bool",
    BYTEA: "bytea",
    INT8: "int8",
    INT2: "int2",
    INT4: "int4",
    TEXT: "text",
    OID: "oid",
    JSON: "json",
    JSONB: "jsonb",
    FLOAT4: "float4",
    FLOAT8: "float8",
    VARCHAR: "varchar",
    DATE: "date",
    TIME: "time",
    TIMESTAMP: "timestamp",
    TIMESTAMPTZ: "timestamptz",
    INTERVAL: "interval",
    NUMERIC: "numeric",
    UUID: "uuid",
    NAME: "name",
    CHAR: "char",
    BPCHAR: "bpchar",
    TIMETZ: "timetz",
    UNKNOWN: "unknown",
}
TYPE_NAMES.update({a: "_" + TYPE_NAMES[e] for e, a in ARRAY_OF.items()})
# Byte length per pg_type.typlen (-1: variable).
TYPE_LEN = {
    BOOL: 1,
    INT2: 2,
    INT4: 4,
    INT8: 8,
    OID: 4,
    FLOAT4: 4,
    FLOAT8: 8,
    DATE: 4,
    TIME: 8,
    TIMESTAMP: 8,
    TIMESTAMPTZ: 8,
    INTERVAL: 16,
    UUID: 16,
    NAME: 64,
    CHAR: 1,
}

_SCALARS = {
    "BOOLEAN": BOOL,
    "TINYINT": INT2,
    "SMALLINT": INT2,
    "UTINYINT": INT2,
    "INTEGER": INT4,
    "USMALLINT": INT4,
    "BIGINT": INT8,
    "UINTEGER": INT8,
    "UBIGINT": NUMERIC,
    "HUGEINT": NUMERIC,
    "UHUGEINT": NUMERIC,
    "FLOAT": FLOAT4,
    "DOUBLE": FLOAT8,
    "VARCHAR": TEXT,
    "JSON": JSON,
    "BLOB": BYTEA,
    "DATE": DATE,
    "TIME": TIME,
    "TIMESTAMP": TIMESTAMP,
    "TIMESTAMP_S": TIMESTAMP,
    "TIMESTAMP_MS": TIMESTAMP,
    "TIMESTAMP_NS": TIMESTAMP,
    "TIMESTAMP WITH TIME ZONE": TIMESTAMPTZ,
    "INTERVAL": INTERVAL,
    "UUID": UUID,
    "BIT": TEXT,
    "ENUM": TEXT,
    "NULL": TEXT,
    '"NULL"': TEXT,
    "TIME WITH TIME ZONE": TEXT,
}


def pg_oid(duck_type: Any) -> int:
    """The Postgres type OID for a DuckDB type (a DuckDBPyType or its string form)."""
    s = str(duck_type).strip()
    if s.endswith("]"):  # LIST or ARRAY: the element's array type; nested lists -> json
        inner = s[: s.rindex("[")]
        element = pg_oid(inner)
        return ARRAY_OF.get(element, JSON) if not inner.endswith("]") else JSON
    upper = s.upper()
    if upper.startswith(("DECIMAL", "NUMERIC")):
        return NUMERIC
    if upper.startswith(("STRUCT", "MAP", "UNION")):
        return JSON
    if upper.startswith("ENUM"):
        return TEXT
    return _SCALARS.get(upper, TEXT)


# -- text format -----------------------------------------------------------------------------

_EPOCH_DATE = dt.date(2000, 1, 1)
_EPOCH = dt.datetime(2000, 1, 1)
_EPOCH_TZ = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _json_default(v: Any) -> Any:
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        return "\\x" + v.hex()
    if isinstance(v, (uuid.UUID, dt.timedelta)):
        return str(v)
    raise TypeError(type(v).__name__)


def _text_json(v: Any) -> str:
    if isinstance(v, str):  # a JSON column arrives as its text
        return v
    return json.dumps(v, default=_json_default, ensure_ascii=False)


def _text_interval(v: dt.timedelta) -> str:
    days, secs = v.days, v.seconds
    micros = v.microseconds
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    frac = f".{micros:06d}" if micros else ""
    return f"{days} days {h:02d}:{m:02d}:{s:02d}{frac}"


def _pg_offset(offset: dt.timedelta | None) -> str:
    """A UTC offset as Postgres writes it: +00, -05, +05:30, +00:09:21."""
    seconds = int((offset or dt.timedelta()).total_seconds())
    sign = "-" if seconds < 0 else "+"
    h, rem = divmod(abs(seconds), 3600)
    m, sec = divmod(rem, 60)
    return f"{sign}{h:02d}" + (f":{m:02d}" if m or sec else "") + (f":{sec:02d}" if sec else "")


def _text_scalar(oid: int, tz: dt.tzinfo = dt.UTC) -> Callable[[Any], str]:
    if oid == BOOL:
        return lambda v: "t" if v else "f"
    if oid == BYTEA:
        return lambda v: "\\x" + bytes(v).hex()
    if oid == FLOAT4:  # the shortest text that reads back as the same float32
        return lambda v: (
            "NaN"
            if v != v
            else "Infinity"
            if v == float("inf")
            else "-Infinity"
            if v == float("-inf")
            else str(np.float32(v))
        )
    if oid == FLOAT8:
        return lambda v: (
            "NaN"
            if v != v
            else "Infinity"
            if v == float("inf")
            else "-Infinity"
            if v == float("-inf")
            else repr(float(v))
        )
    if oid == JSON:
        return _text_json
    if oid == TIMESTAMP:
        return lambda v: v.isoformat(sep=" ") if isinstance(v, dt.datetime) else str(v)
    if oid == TIMESTAMPTZ:

        def tstz(v: Any) -> str:  # in the session's TimeZone, as Postgres
            if not isinstance(v, dt.datetime):
                return str(v)
            local = v.astimezone(tz)
            return local.replace(tzinfo=None).isoformat(sep=" ") + _pg_offset(local.utcoffset())

        return tstz
    if oid == INTERVAL:
        return lambda v: _text_interval(v) if isinstance(v, dt.timedelta) else str(v)
    return str


def _quote_array_item(s: str) -> str:
    if s == "" or any(c in s for c in ' ,{}"\\') or s.upper() == "NULL":
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return s


def text_encoder(oid: int, tz: dt.tzinfo = dt.UTC) -> Callable[[Any], bytes]:
    """Postgres text format; ``tz`` is the session's TimeZone (for timestamptz)."""
    element = ELEMENT_OF.get(oid)
    if element is not None:
        item = _text_scalar(element, tz)

        def arr(v: Any) -> bytes:
            parts = ["NULL" if x is None else _quote_array_item(item(x)) for x in v]
            return ("{" + ",".join(parts) + "}").encode()

        return arr
    scalar = _text_scalar(oid, tz)
    return lambda v: scalar(v).encode()


# -- binary format ---------------------------------------------------------------------------


def _bin_numeric(v: Any) -> bytes:
    d = decimal.Decimal(v)
    if d.is_nan():
        return struct.pack("!hhHh", 0, 0, 0xC000, 0)
    sign, digits, exp = d.as_tuple()
    dscale = max(0, -exp)
    s = "".join(map(str, digits))
    if exp > 0:
        s += "0" * exp
        exp = 0
    int_part = s[: len(s) + exp] if exp < 0 else s
    frac_part = s[len(s) + exp :] if exp < 0 else ""
    int_part = int_part.lstrip("0")
    int_part = "0" * (-len(int_part) % 4) + int_part
    frac_part += "0" * (-len(frac_part) % 4)
    groups = [int(int_part[i : i + 4]) for i in range(0, len(int_part), 4)]
    weight = len(groups) - 1
    groups += [int(frac_part[i : i + 4]) for i in range(0, len(frac_part), 4)]
    while groups and groups[-1] == 0:  # trailing zero groups carry no information
        groups.pop()
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    if not groups:
        weight = 0
    header = struct.pack("!hhHh", len(groups), weight, 0x4000 if sign else 0, dscale)
    return header + struct.pack(f"!{len(groups)}h", *groups)


def _bin_scalar(oid: int) -> Callable[[Any], bytes]:
    fixed = {BOOL: "!?", INT2: "!h", INT4: "!i", INT8: "!q", OID: "!I", FLOAT4: "!f", FLOAT8: "!d"}
    if oid in fixed:
        fmt = struct.Struct(fixed[oid])
        return lambda v: fmt.pack(v)
    if oid == BYTEA:
        return bytes
    if oid == NUMERIC:
        return _bin_numeric
    if oid == DATE:
        return lambda v: struct.pack("!i", (v - _EPOCH_DATE).days)
    if oid == TIMESTAMP:
        return lambda v: struct.pack("!q", (v - _EPOCH) // dt.timedelta(microseconds=1))
    if oid == TIMESTAMPTZ:
        return lambda v: struct.pack(
            "!q", (v.astimezone(dt.UTC) - _EPOCH_TZ) // dt.timedelta(microseconds=1)
        )
    if oid == TIME:
        return lambda v: struct.pack(
            "!q", ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
        )
    if oid == INTERVAL:
        return lambda v: struct.pack("!qii", v.seconds * 1_000_000 + v.microseconds, v.days, 0)
    if oid == UUID:
        return lambda v: (v if isinstance(v, uuid.UUID) else uuid.UUID(str(v))).bytes
    if oid == JSON:
        return lambda v: _text_json(v).encode()
    text = _text_scalar(oid)
    return lambda v: text(v).encode()


def binary_encoder(oid: int) -> Callable[[Any], bytes]:
    element = ELEMENT_OF.get(oid)
    if element is not None:
        item = _bin_scalar(element)

        def arr(v: Any) -> bytes:
            has_null = any(x is None for x in v)
            out = [struct.pack("!iiiii", 1, int(has_null), element, len(v), 1)]
            for x in v:
                if x is None:
                    out.append(struct.pack("!i", -1))
                else:
                    b = item(x)
                    out.append(struct.pack("!i", len(b)) + b)
            return b"".join(out)

        return arr
    return _bin_scalar(oid)


def encoder(oid: int, binary: bool, tz: dt.tzinfo = dt.UTC) -> Callable[[Any], bytes]:
    """The encoder of one result column (binary timestamptz is UTC, whatever ``tz``)."""
    return binary_encoder(oid) if binary else text_encoder(oid, tz)


# -- parameters --------------------------------------------------------------------------------

_TEXT_LIKE = (TEXT, VARCHAR, NAME, BPCHAR, CHAR, UNKNOWN, JSON, 0)
"""Types whose binary format is their text (0: a parameter the client left untyped)."""

_NUMERIC_SIGNS = {0x0000: 0, 0x4000: 1}
_NUMERIC_SPECIAL = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}


def decode_param(oid: int, data: bytes | None, binary: bool) -> Any:
    """A parameter value sent by a client, as the Python value DuckDB should bind.

    Binary values follow Postgres's send/recv formats; a binary parameter of a type not
    decoded here raises ``NotImplementedError`` naming the type, rather than being read
    as text."""
    if data is None:
        return None
    if not binary:
        s = data.decode()
        if oid in (INT2, INT4, INT8, OID):
            return int(s)
        if oid in (FLOAT4, FLOAT8):
            return float(s)
        if oid == NUMERIC:
            return decimal.Decimal(s)
        if oid == BOOL:
            return s.lower() in ("t", "true", "1", "yes", "on", "y")
        if oid == BYTEA:
            return bytes.fromhex(s[2:]) if s.startswith("\\x") else s.encode()
        return s  # text, unknown and the rest: DuckDB casts it to what the query needs
    if oid == INT2:
        return struct.unpack("!h", data)[0]
    if oid == INT4:
        return struct.unpack("!i", data)[0]
    if oid in (INT8,):
        return struct.unpack("!q", data)[0]
    if oid == OID:
        return struct.unpack("!I", data)[0]
    if oid == FLOAT4:
        return struct.unpack("!f", data)[0]
    if oid == FLOAT8:
        return struct.unpack("!d", data)[0]
    if oid == BOOL:
        return data != b"\x00"
    if oid == BYTEA:
        return bytes(data)
    if oid == DATE:
        return _EPOCH_DATE + dt.timedelta(days=struct.unpack("!i", data)[0])
    if oid == TIMESTAMP:
        return _EPOCH + dt.timedelta(microseconds=struct.unpack("!q", data)[0])
    if oid == TIMESTAMPTZ:
        return _EPOCH_TZ + dt.timedelta(microseconds=struct.unpack("!q", data)[0])
    if oid == UUID:
        return uuid.UUID(bytes=bytes(data))
    if oid == NUMERIC:
        return _decode_numeric(data)
    if oid == TIME:
        return _decode_time(data)
    if oid == TIMETZ:
        return _decode_timetz(data)
    if oid == INTERVAL:
        return _decode_interval(data)
    if oid == JSONB:
        if data[:1] != b"\x01":
            raise ValueError(f"jsonb binary format version {data[:1]!r} is not 1")
        return data[1:].decode()
    if oid in ELEMENT_OF:
        return _decode_binary_array(data)
    if oid in _TEXT_LIKE:
        return data.decode()
    raise NotImplementedError(
        f"parameters of type {TYPE_NAMES.get(oid, f'with OID {oid}')} in binary format are "
        "not supported; send this parameter in text format"
    )


def _decode_numeric(data: bytes) -> decimal.Decimal:
    """Postgres numeric_send: ndigits, weight, sign, dscale, then base-10000 digits."""
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", data)
    if sign in _NUMERIC_SPECIAL:
        return decimal.Decimal(_NUMERIC_SPECIAL[sign])
    if sign not in _NUMERIC_SIGNS or ndigits < 0 or dscale < 0:
        raise ValueError(f"not a numeric in binary format (sign 0x{sign:04x}, dscale {dscale})")
    groups = struct.unpack_from(f"!{ndigits}H", data, 8)
    if len(data) != 8 + 2 * ndigits or any(g > 9999 for g in groups):
        raise ValueError("not a numeric in binary format (bad digit groups)")
    digits = "".join(f"{g:04d}" for g in groups) or "0"
    exponent = 4 * (weight - ndigits + 1)  # the last group's place value, a power of 10
    value = decimal.Decimal((_NUMERIC_SIGNS[sign], tuple(map(int, digits)), exponent))
    with decimal.localcontext() as ctx:
        ctx.prec = max(ctx.prec, len(digits) + dscale + 4)
        return value.quantize(decimal.Decimal((0, (1,), -dscale)))


def _time_of(micros: int) -> dt.time:
    if not 0 <= micros <= 86_400_000_000:
        raise ValueError(f"time of day out of range ({micros} microseconds)")
    if micros == 86_400_000_000:  # Postgres allows 24:00:00; Python has no such time
        raise ValueError("24:00:00 cannot be represented; send 23:59:59.999999 or a text value")
    seconds, us = divmod(micros, 1_000_000)
    return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60, us)


def _decode_time(data: bytes) -> dt.time:
    (micros,) = struct.unpack("!q", data)
    return _time_of(micros)


def _decode_timetz(data: bytes) -> str:
    """timetz_send: microseconds and the zone's offset in seconds *west* of UTC."""
    micros, west = struct.unpack("!qi", data)
    t = _time_of(micros)
    east = -west
    sign = "+" if east >= 0 else "-"
    h, rem = divmod(abs(east), 3600)
    return f"{t.isoformat()}{sign}{h:02d}:{rem // 60:02d}:{rem % 60:02d}"


def _decode_interval(data: bytes) -> Any:
    """interval_send: microseconds, days, months (kept apart: a month is not 30 days)."""
    micros, days, months = struct.unpack("!qii", data)
    if months == 0:
        return dt.timedelta(days=days, microseconds=micros)
    from duckdb.value.constant import IntervalValue

    return IntervalValue(f"{months} months {days} days {micros} microseconds")


def _decode_binary_array(data: bytes) -> list[Any]:
    ndim, _has_null, element = struct.unpack_from("!iiI", data)
    if ndim == 0:
        return []
    if ndim != 1:
        raise ValueError("only one-dimensional array parameters are supported")
    n, _lower = struct.unpack_from("!ii", data, 12)
    pos, out = 20, []
    for _ in range(n):
        (size,) = struct.unpack_from("!i", data, pos)
        pos += 4
        if size < 0:
            out.append(None)
        else:
            out.append(decode_param(element, data[pos : pos + size], True))
            pos += size
    return out
