"""The values every benchmark stores: the same objects for every implementation."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

__all__ = ["FLAT", "NESTED", "SERIALIZER_PAYLOADS", "UserRecord", "bytes_payload"]

#: A flat dict of scalars, the typical cached row.
FLAT: dict[str, Any] = {
    "id": 1,
    "name": "Ada",
    "email": "ada@example.com",
    "active": True,
    "score": 3.5,
}
#: A small nested dict: containers inside the value.
NESTED: dict[str, Any] = {"id": 1, "tags": ["a", "b"], "profile": {"age": 36}}


@dataclass
class UserRecord:
    """A custom class: never a builtin, so every backend runs it through the serializer."""

    id: int
    name: str
    email: str
    active: bool
    score: float


def _record(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "name": f"user{i}",
        "email": f"user{i}@example.com",
        "active": i % 3 != 0,
        "score": i * 0.25,
        "tags": ["admin", "beta"] if i % 10 == 0 else ["user"],
        "created": "2024-05-01T12:00:00Z",
    }


def _text_blob(size: int) -> str:
    words = ["cache", "plug", "redis", "memcached", "serializer", "latency", "the", "a"]
    rng = random.Random(64)
    text = " ".join(rng.choice(words) for _ in range(size // 4))
    return text[:size].ljust(size, ".")


#: Realistic payloads for the serializer comparison (all encodable by pickle, json and msgpack).
SERIALIZER_PAYLOADS: dict[str, Any] = {
    "user record": _record(1),
    "100 records": [_record(i) for i in range(100)],
    "64 KiB text": _text_blob(64 * 1024),
    "1000 floats": {f"m{i}": random.Random(i).random() * 1000 for i in range(1000)},
}


def bytes_payload(size: int = 256) -> bytes:
    """An opaque bytes value, stored as-is by raw drivers."""
    return bytes(random.Random(size).randrange(256) for _ in range(size))
