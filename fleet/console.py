"""What every console page shares: role checks, full page or htmx fragment, keyset pages, confirmations.

Each app adds its console pages the same way: views in ``<app>/views.py`` decorated with
``viewer_required`` (reads) or ``operator_required`` (writes), rendered with ``render_page`` from a page
template that includes its fragment template, routes in ``<app>/console_urls.py`` included by
``fleet/urls.py``, and a link in the navigation of ``fleet/templates/fleet/base.html``. Writes call the
app's services, the same functions the REST API calls.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.utils.cache import patch_vary_headers

from fleet.errors import ApiError
from fleet.models import Role
from fleet.services import Actor


def can_write(request: HttpRequest) -> bool:
    user = request.user
    return user.is_authenticated and user.has_role(Role.OPERATOR)


def can_admin(request: HttpRequest) -> bool:
    user = request.user
    return user.is_authenticated and user.has_role(Role.ADMIN)


def viewer_required(view: Callable) -> Callable:
    """Any logged-in operator account (viewer and up); anonymous users go to the login page."""
    return login_required(view)


def operator_required(view: Callable) -> Callable:
    """Writes: the operator role. A viewer gets 403 even for a hand-made request (the page shows them no
    control, but the server is what refuses)."""

    @wraps(view)
    def checked(request: HttpRequest, *args, **kwargs):
        if not can_write(request):
            raise PermissionDenied("This action needs the operator role.")
        return view(request, *args, **kwargs)

    return login_required(checked)


def admin_required(view: Callable) -> Callable:
    """What the API keeps for admins (e.g. revoking a release): the admin role, 403 for anyone else."""

    @wraps(view)
    def checked(request: HttpRequest, *args, **kwargs):
        if not can_admin(request):
            raise PermissionDenied("This action needs the admin role.")
        return view(request, *args, **kwargs)

    return login_required(checked)


def actor_of(request: HttpRequest) -> Actor:
    return Actor.of_user(request.user)


def is_htmx(request: HttpRequest) -> bool:
    # A boosted link asks for a whole page; only a targeted htmx request wants the fragment.
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-Boosted") != "true"


def render_page(
    request: HttpRequest,
    page_template: str,
    fragment_template: str | None,
    context: dict[str, Any],
    *,
    status: int = 200,
) -> HttpResponse:
    """The full page for a normal request, only the fragment for an htmx request (``HX-Request``).

    The page template includes the fragment template, so both render the same markup. A page without a
    fragment (``None``) always renders whole, e.g. the answer to a plain form post.
    """
    context = {"can_write": can_write(request), "can_admin": can_admin(request), **context}
    template = fragment_template if fragment_template and is_htmx(request) else page_template
    response = render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])  # a cache must not answer a page request with a fragment
    return response


def error_message(exc: ApiError) -> str:
    """The human sentence of a service's refusal, for an inline error on the page."""
    return str(exc.detail)


@dataclass(frozen=True)
class KeysetPage:
    """One page of a list ordered by a unique key, and the keys to ask for the next and previous pages.

    Keyset (cursor) paging reads ``WHERE key > last ORDER BY key LIMIT n+1``: an index range scan that costs
    the same on page 10,000 as on page 1, where OFFSET would read and discard every earlier row. No page
    counts the whole table either; "more" is known from the one extra row.
    """

    items: list
    next_after: str | None
    prev_before: str | None
    first_page: bool
    params: QueryDict

    def _query(self, **cursor: str) -> str:
        """The current query string with the cursor replaced (filters stay)."""
        q = self.params.copy()
        for key in ("after", "before"):
            q.pop(key, None)
        for key, value in cursor.items():
            q[key] = value
        return "?" + q.urlencode()

    @property
    def next_query(self) -> str | None:
        return self._query(after=self.next_after) if self.next_after is not None else None

    @property
    def prev_query(self) -> str | None:
        return self._query(before=self.prev_before) if self.prev_before is not None else None

    @property
    def first_query(self) -> str:
        return self._query()


def keyset_page(
    queryset: QuerySet, params: QueryDict, *, key: str = "pk", size: int = 50, descending: bool = False
) -> KeysetPage:
    """Page ``queryset`` (any filters applied) by ``key`` from ``?after=`` or ``?before=`` (both exclusive).

    ``after`` walks forward in the list's order, ``before`` backward; ``descending`` lists newest first.
    """
    forward, backward = ("lt", "gt") if descending else ("gt", "lt")
    order = f"-{key}" if descending else key
    reverse_order = key if descending else f"-{key}"
    after = params.get("after")
    before = params.get("before")
    if "\x00" in (after or "") + (before or ""):
        after = before = None  # PostgreSQL text cannot hold NUL; no key contains it
    if after or before:
        try:
            queryset.filter(**{f"{key}__gt": after or before})  # building the filter checks the value's type
        except (ValueError, TypeError, ValidationError):
            after = before = None  # a hand-edited cursor of the wrong type: the first page, not a 500
    if before:
        rows = list(queryset.filter(**{f"{key}__{backward}": before}).order_by(reverse_order)[: size + 1])
        has_prev = len(rows) > size
        items = list(reversed(rows[:size]))
        has_next = True
    else:
        if after:
            queryset = queryset.filter(**{f"{key}__{forward}": after})
        rows = list(queryset.order_by(order)[: size + 1])
        has_next = len(rows) > size
        items = rows[:size]
        has_prev = bool(after)
    first = items[0] if items else None
    last = items[-1] if items else None
    return KeysetPage(
        items=items,
        next_after=str(getattr(last, key)) if has_next and last is not None else None,
        prev_before=str(getattr(first, key)) if has_prev and first is not None else None,
        first_page=not has_prev,
        params=params,
    )
