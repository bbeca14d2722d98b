"""Daily range partitions of the raw telemetry tables on PostgreSQL (a plain table elsewhere).

Raw rows (inference records, heartbeats) are partitioned by the device's ``ts`` per UTC day, so retention
drops a whole day with one DROP TABLE instead of deleting millions of rows, and the per-device index of a
day stays small. Partitions are created ahead (today .. today + DAYS_AHEAD) at migrate and by a beat task;
a DEFAULT partition catches what has no day partition (old buffered data arriving late, or a beat task
that did not run), so an insert never fails for want of a partition.
"""

import datetime as dt
import logging
import re

from django.db import connection as default_connection
from django.db import transaction
from django.db.utils import DatabaseError

log = logging.getLogger(__name__)

PARTITIONED_TABLES = ("telemetry_inferencerecord", "telemetry_heartbeat")
DAYS_AHEAD = 3
_DAY_SUFFIX = re.compile(r"_p(\d{8})$")


def create_partitioned_table(schema_editor, model, *, key: str = "ts") -> None:
    """Create ``model``'s table, partitioned by range of ``key`` on PostgreSQL (used by the migration)."""
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.create_model(model)
        return
    sql, params = schema_editor.table_sql(model)
    schema_editor.execute(f"{sql} PARTITION BY RANGE ({schema_editor.quote_name(key)})", params or None)
    for index in model._meta.indexes:
        schema_editor.add_index(model, index)
    table = model._meta.db_table
    schema_editor.execute(f"CREATE TABLE IF NOT EXISTS {table}_default PARTITION OF {table} DEFAULT")


def partition_name(table: str, day: dt.date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def existing_partitions(table: str, *, connection=default_connection) -> dict[dt.date, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
            [table],
        )
        names = [row[0] for row in cursor.fetchall()]
    found = {}
    for name in names:
        match = _DAY_SUFFIX.search(name)
        if match:
            found[dt.datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=dt.UTC).date()] = name
    return found


def ensure_partitions(*, today: dt.date | None = None, days_ahead: int = DAYS_AHEAD, connection=None) -> list[str]:
    """Create the day partitions from today to today + days_ahead that are missing; returns their names."""
    connection = connection or default_connection
    if connection.vendor != "postgresql":
        return []
    today = today or dt.datetime.now(dt.UTC).date()
    created = []
    for table in PARTITIONED_TABLES:
        have = existing_partitions(table, connection=connection)
        for offset in range(days_ahead + 1):
            day = today + dt.timedelta(days=offset)
            if day in have:
                continue
            name = partition_name(table, day)
            try:
                with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                    cursor.execute(
                        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} FOR VALUES FROM (%s) TO (%s)",
                        [f"{day.isoformat()} 00:00:00+00", f"{(day + dt.timedelta(days=1)).isoformat()} 00:00:00+00"],
                    )
                created.append(name)
            except DatabaseError:
                # The DEFAULT partition already holds rows of that day (the task did not run for days):
                # those rows stay in DEFAULT, which retention also cleans; nothing is lost.
                log.exception("cannot create partition %s", name)
    return created


def drop_partitions_before(*, cutoff: dt.date, connection=None) -> list[str]:
    """Drop the day partitions that end at or before ``cutoff`` (retention); returns their names."""
    connection = connection or default_connection
    if connection.vendor != "postgresql":
        return []
    dropped = []
    for table in PARTITIONED_TABLES:
        for day, name in sorted(existing_partitions(table, connection=connection).items()):
            if day + dt.timedelta(days=1) <= cutoff:
                with connection.cursor() as cursor:
                    cursor.execute(f"DROP TABLE IF EXISTS {name}")
                dropped.append(name)
    return dropped
