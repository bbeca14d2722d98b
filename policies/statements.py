"""Cursors for the gateway's hot statements: prepared on PostgreSQL.

Every allowed gateway request runs the same three statements (caller lookup, reservation, settlement).
With Django's default client-side binding PostgreSQL parses and plans each one again every time, about
half of its CPU per gateway request; a prepared statement is parsed and planned once per connection.
Django leaves prepared statements off because transaction-mode poolers before PgBouncer 1.21 do not carry
them from one server connection to the next: ``LLM_GATEWAY_PREPARED_STATEMENTS=false`` turns them off
here too (docs/configuration.md).
"""

import psycopg
from django.conf import settings
from django.db import connection

_ONLY_WHEN_ASKED = 2**31 - 1


class _PreparedCursor(psycopg.Cursor):
    """Server-side binding, every statement prepared (Django's connections never prepare by themselves:
    their prepare_threshold is None)."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


def hot_cursor():
    """A Django cursor (database errors wrapped, queries logged when Django logs them) for one of the
    gateway's hot statements; a plain one elsewhere than PostgreSQL or with prepared statements off."""
    if connection.vendor != "postgresql" or not settings.LLM_GATEWAY_PREPARED_STATEMENTS:
        return connection.cursor()
    # What connection.cursor() does before making its cursor.
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    if connection.connection.prepare_threshold is None:
        # Django opens connections with prepare_threshold None, which psycopg reads as "never prepare",
        # even when asked. Django's own cursors bind client-side and never prepare whatever the threshold,
        # so a threshold never reached lets only these cursors' explicit prepare through.
        connection.connection.prepare_threshold = _ONLY_WHEN_ASKED
    with connection.wrap_database_errors:
        cursor = _PreparedCursor(connection.connection)
    return connection.make_debug_cursor(cursor) if connection.queries_logged else connection.make_cursor(cursor)
