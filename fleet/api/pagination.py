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
