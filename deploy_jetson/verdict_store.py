"""The plant-wide verdict store: every device's journal rows in one PostgreSQL database.

Schema: ``verdicts`` and ``line_events`` mirror the device journal's tables (edge_infer.journal)
with the device's name added; a row's key is (device, station, id), id being its id in that
device's journal, so a row sent twice is stored once (``ON CONFLICT DO NOTHING``). A
review (line_events kind=review) also sets ``verdicts.confirmed`` here, as it does in the
journal. MIGRATIONS is applied in order; ``schema_version`` records which ones ran, so a
newer lineside brings an older store up to date and never applies one twice.
"""

from __future__ import annotations

from edge_infer.errors import LinesideError

SCHEMES = ("postgresql://", "postgres://")

# Append only: a released migration is never edited, the next change is a new entry.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "verdicts and line events, keyed by (device, station, journal id)", """
CREATE TABLE verdicts (
    device text NOT NULL,
    station text NOT NULL,
    id bigint NOT NULL,
    decided_at double precision NOT NULL,
    camera text,
    frame_id bigint,
    status text NOT NULL,
    score double precision,
    threshold double precision,
    reason text,
    detail jsonb,
    confirmed smallint,
    synced_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, station, id)
);
CREATE INDEX verdicts_station_time ON verdicts (station, decided_at);
CREATE TABLE line_events (
    device text NOT NULL,
    station text NOT NULL,
    id bigint NOT NULL,
    at double precision NOT NULL,
    kind text NOT NULL,
    who text NOT NULL,
    detail jsonb,
    synced_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, station, id)
);
CREATE INDEX line_events_station_kind_at ON line_events (station, kind, at);
"""),
    (2, "verdicts_t: verdicts with decided_at as a timestamp, for shift and day queries", """
CREATE VIEW verdicts_t AS SELECT *, to_timestamp(decided_at) AS decided_ts FROM verdicts;
"""),
]


def is_store_url(text) -> bool:
    return isinstance(text, str) and text.startswith(SCHEMES)


def describe(url: str) -> str:
    """host:port/db of a connection URL, without user or password: for messages and cursor names."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except ProgrammingError as exc:  # a malformed URL
        raise LinesideError(f"cannot read the PostgreSQL URL: {exc}; write postgresql://USER@HOST[:PORT]/DB "
                            "(the password in PGPASSWORD or ~/.pgpass, not in the URL)") from None
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


def connect(url: str, **kwargs):
    """A psycopg connection, or a LinesideError that says what to fix."""
    try:
        import psycopg
    except ImportError:
        raise LinesideError("the verdict store needs psycopg: pip install 'lineside[fleet]'") from None
    try:
        # autocommit: every unit of work is an explicit `with conn.transaction()` block that commits at its end
        return psycopg.connect(url, connect_timeout=10, autocommit=True, **kwargs)
    except psycopg.OperationalError as exc:
        raise LinesideError(f"cannot connect to the verdict store {describe(url)}: {str(exc).strip()}; check the "
                            "URL, that PostgreSQL runs and accepts this host, and the password "
                            "(PGPASSWORD or ~/.pgpass)") from None


def migrate(conn) -> int:
    """Apply the migrations this store has not had yet, in order; return the schema version."""
    with conn.transaction():
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                     "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        # One migrating client at a time: two devices syncing for the first time must not both create tables.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('lineside schema_version'))")
        done = {v for (v,) in conn.execute("SELECT version FROM schema_version").fetchall()}
        for version, description, sql in MIGRATIONS:
            if version not in done:
                conn.execute(sql)
                conn.execute("INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                             (version, description))
    newest = max(v for v, _, _ in MIGRATIONS)
    have = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    if have > newest:
        raise LinesideError(f"the verdict store has schema version {have}, newer than this lineside knows "
                            f"({newest}): upgrade lineside on this device")
    return have
