from django.core.exceptions import ValidationError
from django.db import connection
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination


class IdCursorPagination(CursorPagination):
    """Cursor pagination on the primary key: every page is an index range scan, so listing stays fast
    at millions of rows (offset pagination would scan and discard all earlier rows). A view may set
    ``ordering`` (e.g. "-pk") to page newest first."""

    ordering = "pk"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000

    def get_ordering(self, request, queryset, view):
        ordering = getattr(view, "ordering", None)
        return (ordering,) if isinstance(ordering, str) else (self.ordering,)

    def paginate_queryset(self, queryset, request, view=None):
        self.pk_field = queryset.model._meta.pk
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request):
        """DRF's decoding, plus a check that the position is a possible key: a cursor is client input,
        and a position the database cannot compare (text with NUL, a non-number or out-of-range number
        for an integer key) would otherwise fail in the query."""
        cursor = super().decode_cursor(request)
        if cursor is None or cursor.position is None:
            return cursor
        try:
            if "\x00" in cursor.position:
                raise ValidationError("NUL")
            value = self.pk_field.to_python(cursor.position)
            if isinstance(value, int):
                low, high = connection.ops.integer_field_range(self.pk_field.get_internal_type())
                if (low is not None and value < low) or (high is not None and value > high):
                    raise ValidationError("out of range")
        except ValidationError as exc:
            raise NotFound(self.invalid_cursor_message) from exc
        return cursor
