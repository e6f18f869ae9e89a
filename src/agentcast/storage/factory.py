"""Build a :class:`~agentcast.storage.base.HistoryStore` from a URL in the configuration.

Accepted URLs:

* ``memory`` or ``memory://``: :class:`~agentcast.storage.memory.MemoryHistoryStore`, not
  durable (``?max_events_per_topic=N`` sets the ring size per topic).
* ``sqlite:///relative/path.db`` (relative to the working directory) or
  ``sqlite:////absolute/path.db``: :class:`~agentcast.storage.sqlite.SqliteHistoryStore`
  (``?synchronous=full`` to fsync every commit; the default ``normal`` survives a process
  crash but not a power loss).
* ``postgresql://...`` or ``postgres://...``: a libpq-style DSN for
  :class:`~agentcast.storage.postgres.PostgresHistoryStore` (``?schema=name`` picks the
  schema, default ``agentcast``; other query parameters go to the server as settings).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from agentcast.config import ConfigError
from agentcast.storage.base import HistoryStore
from agentcast.storage.consumers import ConsumerStore, MemoryConsumerStore


def open_history_store(url: str, *, dedupe_window: float) -> HistoryStore:
    """A store for ``url``, not yet opened (call ``await store.open()``).

    Raises :class:`~agentcast.config.ConfigError` for a URL it cannot serve.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else url.lower()
    if scheme == "memory":
        return _memory(url, dedupe_window)
    if scheme == "sqlite":
        return _sqlite(url, dedupe_window)
    if scheme in ("postgresql", "postgres"):
        return _postgres(url, dedupe_window)
    if scheme == "nats":
        return _nats(url, dedupe_window)
    if scheme in ("redis", "rediss"):
        return _redis(url, dedupe_window)
    raise ConfigError(
        f"history store URL {url!r} is not supported: use 'memory', "
        "'sqlite:///relative/path.db', 'sqlite:////absolute/path.db', 'postgresql://...' "
        "or 'redis://...'"
    )


def _options(url: str, query: str, allowed: set[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(
                f"history store URL {url!r}: unknown option {name!r} (known: {known})"
            )
        options[name] = value
    return options


def _memory(url: str, dedupe_window: float) -> HistoryStore:
    from agentcast.storage.memory import MemoryHistoryStore

    if url.lower() == "memory":
        return MemoryHistoryStore(dedupe_window=dedupe_window)
    parts = urlsplit(url)
    if not url.lower().startswith("memory://") or parts.netloc or parts.path:
        raise ConfigError(f"history store URL {url!r}: write 'memory' or 'memory://'")
    options = _options(url, parts.query, {"max_events_per_topic"})
    size = options.get("max_events_per_topic")
    if size is None:
        return MemoryHistoryStore(dedupe_window=dedupe_window)
    if not size.isdigit() or int(size) < 1:
        raise ConfigError(f"history store URL {url!r}: max_events_per_topic must be >= 1")
    return MemoryHistoryStore(int(size), dedupe_window=dedupe_window)


def _sqlite(url: str, dedupe_window: float) -> HistoryStore:
    from agentcast.storage.sqlite import SqliteHistoryStore

    parts = urlsplit(url)
    if not url.lower().startswith("sqlite:///") or parts.netloc:
        raise ConfigError(
            f"history store URL {url!r}: write 'sqlite:///relative/path.db' or "
            "'sqlite:////absolute/path.db' (three slashes, then the path)"
        )
    path = parts.path[1:]  # "sqlite:///a.db" -> "a.db", "sqlite:////abs/a.db" -> "/abs/a.db"
    if not path or path.endswith("/"):
        raise ConfigError(f"history store URL {url!r}: the database file name is missing")
    options = _options(url, parts.query, {"synchronous"})
    synchronous = options.get("synchronous", "normal").lower()
    if synchronous not in ("normal", "full"):
        raise ConfigError(f"history store URL {url!r}: synchronous must be 'normal' or 'full'")
    return SqliteHistoryStore(path, dedupe_window=dedupe_window, synchronous=synchronous)


def _postgres(url: str, dedupe_window: float) -> HistoryStore:
    from agentcast.storage.postgres import PostgresHistoryStore

    parts = urlsplit(url)
    if not url.lower().startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"history store URL {url!r}: write 'postgresql://user@host/db'")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for name, value in query if name == "schema"]
    rest = [(name, value) for name, value in query if name != "schema"]
    dsn = urlunsplit(parts._replace(query=urlencode(rest)))
    try:
        if schemas:
            return PostgresHistoryStore(dsn, dedupe_window=dedupe_window, schema=schemas[-1])
        return PostgresHistoryStore(dsn, dedupe_window=dedupe_window)
    except ValueError as exc:
        raise ConfigError(f"history store URL {url!r}: {exc}") from None


def _redis(url: str, dedupe_window: float) -> HistoryStore:
    from agentcast.storage.redis_store import RedisHistoryStore

    parts = urlsplit(url)
    if not url.lower().startswith(("redis://", "rediss://")):
        raise ConfigError(f"history store URL {url!r}: write 'redis://host:port/db'")
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    rest = [(name, value) for name, value in query if name != "prefix"]
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    try:
        if prefixes:
            return RedisHistoryStore(client_url, dedupe_window=dedupe_window, prefix=prefixes[-1])
        return RedisHistoryStore(client_url, dedupe_window=dedupe_window)
    except ValueError as exc:
        raise ConfigError(f"history store URL {url!r}: {exc}") from None


def _nats(url: str, dedupe_window: float) -> HistoryStore:
    from agentcast.storage.nats_store import NatsHistoryStore

    parts = urlsplit(url)
    if not url.lower().startswith("nats://") or not parts.netloc:
        raise ConfigError(f"history store URL {url!r}: write 'nats://host:4222?stream=NAME'")
    options = _options(url, parts.query, {"stream", "replicas"})
    replicas = options.get("replicas", "1")
    if not replicas.isdigit() or int(replicas) < 1:
        raise ConfigError(f"history store URL {url!r}: replicas must be >= 1")
    servers = urlunsplit(parts._replace(query="", fragment=""))
    try:
        return NatsHistoryStore(
            servers,
            dedupe_window=dedupe_window,
            stream=options.get("stream", "AGENTCAST"),
            replicas=int(replicas),
        )
    except ValueError as exc:
        raise ConfigError(f"history store URL {url!r}: {exc}") from None


def consumer_store_for(history: HistoryStore) -> ConsumerStore:
    """The consumer-group progress store that lives beside ``history`` (same file or
    database; memory for a memory history, since progress past a lost history means
    nothing)."""
    from agentcast.storage.postgres import PostgresHistoryStore
    from agentcast.storage.redis_store import RedisHistoryStore
    from agentcast.storage.sqlite import SqliteHistoryStore

    if isinstance(history, SqliteHistoryStore):
        from agentcast.storage.sqlite_consumers import SqliteConsumerStore

        return SqliteConsumerStore(history.path)
    if isinstance(history, PostgresHistoryStore):
        from agentcast.storage.postgres_consumers import PostgresConsumerStore

        return PostgresConsumerStore(history.dsn, history.schema)
    if isinstance(history, RedisHistoryStore):
        from agentcast.storage.redis_consumers import RedisConsumerStore

        return RedisConsumerStore(history.url, history.prefix)
    from agentcast.storage.nats_store import NatsHistoryStore

    if isinstance(history, NatsHistoryStore):
        from agentcast.storage.nats_consumers import NatsConsumerStore

        return NatsConsumerStore(history.url, history.stream, history.replicas)
    return MemoryConsumerStore()
