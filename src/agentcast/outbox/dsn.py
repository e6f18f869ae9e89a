"""Parse an outbox DSN: ``postgresql://...[?schema=NAME]`` or ``sqlite:///path``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class OutboxDsn:
    """Where an outbox lives.

    ``kind`` is ``"postgres"`` or ``"sqlite"``; ``target`` is the libpq URL (without the
    ``schema`` parameter) or the SQLite file path; ``schema`` is the PostgreSQL schema holding
    the outbox tables (``None``: the connection's ``search_path``).
    """

    kind: str
    target: str
    schema: str | None = None


def check_identifier(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise ``ValueError``."""
    if not _IDENT.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


def parse_dsn(dsn: str) -> OutboxDsn:
    """Split ``dsn`` into an :class:`OutboxDsn`; raise ``ValueError`` if it is neither form."""
    if dsn.startswith("sqlite:///"):
        path = dsn[len("sqlite:///") :]
        if not path:
            raise ValueError("sqlite DSN needs a path: sqlite:///path/to/file.db")
        return OutboxDsn("sqlite", path)
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schema = None
        rest = []
        for name, value in query:
            if name == "schema":
                schema = check_identifier(value)
            else:
                rest.append((name, value))
        target = urlunsplit(parts._replace(query=urlencode(rest)))
        return OutboxDsn("postgres", target, schema)
    raise ValueError(f"unsupported outbox DSN (postgresql://... or sqlite:///...): {dsn!r}")
