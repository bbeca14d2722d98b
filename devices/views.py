"""Console pages of the device registry. Every write calls the service the REST API calls."""

import datetime as dt

from django.contrib import messages
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from devices import selectors, services
from devices.filters import DeviceFilterSet
from devices.forms import (
    SEEN_CHOICES,
    STATUS_CHOICES,
    BulkAction,
    DeviceBulkForm,
    DeviceEditForm,
    EnrollmentTokenForm,
    GroupCreateForm,
    GroupEditForm,
    device_filter_data,
)
from devices.models import Device, DeviceGroup, DeviceStatus, EnrollmentToken
from fleet.console import (
    actor_of,
    error_message,
    is_htmx,
    keyset_page,
    operator_required,
    render_page,
    viewer_required,
)
from fleet.errors import ApiError
from fleet.models import AuditEvent
from ota.views import device_updates
from policies.views import device_policy
from telemetry import histogram
from telemetry.models import InferenceRollup
from telemetry.selectors import device_presence_history
from telemetry.views import heartbeat_series

PAGE_SIZE = 50
DEVICE_POLL_SECONDS = 15
PRESENCE_HISTORY_ROWS = 10  # the last transitions; the API gives more (GET /api/v1/devices/{id}/presence/)


def _confirm(request, *, title: str, message: str, action: str, button: str, cancel_url: str, **extra):
    """The confirmation step of a destructive action: the same URL, posted again with confirmed=yes."""
    context = {
        "title": title,
        "message": message,
        "action": action,
        "button": button,
        "cancel_url": cancel_url,
        "items": extra.get("items", []),
        "hidden": extra.get("hidden", []),
        "ask_reason": extra.get("ask_reason", False),
    }
    return render(request, "fleet/confirm.html", context)


def _confirmed(request) -> bool:
    return request.method == "POST" and request.POST.get("confirmed") == "yes"


def _back_to(request, fallback: str) -> str:
    """Where to return after a form post: the list the operator came from (same site only)."""
    target = request.POST.get("next", "")
    return target if target.startswith("/") and not target.startswith("//") else fallback


# --- device list and bulk actions -----------------------------------------------------------------


@viewer_required
@require_http_methods(["GET", "POST"])
def device_list(request):
    """Search and filter devices (the API's DeviceFilterSet), a page at a time by id (keyset: no OFFSET,
    no count of the whole table); operators select rows for bulk tag/group/revoke (POST here)."""
    if request.method == "POST":
        return _device_bulk(request)
    filterset = DeviceFilterSet(device_filter_data(request.GET), queryset=selectors.device_list())
    if filterset.is_valid():
        page = keyset_page(filterset.qs, request.GET, size=PAGE_SIZE)
        status = 200
    else:
        page = keyset_page(Device.objects.none(), request.GET, size=PAGE_SIZE)
        status = 400
    context = {
        "page": page,
        "rows": _device_rows(page.items),
        "filter_errors": filterset.errors,
        "params": request.GET,
        "groups": DeviceGroup.objects.all(),
        "status_choices": STATUS_CHOICES,
        "seen_choices": SEEN_CHOICES,
        "bulk_actions": BulkAction,
        "next_url": request.get_full_path(),
    }
    return render_page(request, "devices/device_list.html", "devices/_device_results.html", context, status=status)


def _device_rows(devices: list[Device]) -> list[dict]:
    """What each row of the list shows, worked out in Python: the template engine resolves a dict key far
    faster than a model attribute chain, and a page has 50 rows of 9 cells."""
    detail_url = reverse("devices:detail", args=["DEVICE"])
    now = timezone.now()
    status_labels = dict(DeviceStatus.choices)
    return [
        {
            "id": device.id,
            "url": detail_url.replace("DEVICE", device.id),
            "name": device.name if device.name != device.id else "",
            "status": device.status,
            "status_label": status_labels.get(device.status, device.status),
            "presence": ("online" if device.online else "offline") if device.status == DeviceStatus.ACTIVE else "",
            "last_seen": _ago(device.last_seen_at, now),
            "last_seen_iso": device.last_seen_at.isoformat() if device.last_seen_at else "",
            "group": device.group.name if device.group_id else "",
            "tags": [tag.name for tag in device.tags.all()],
            "hardware_class": device.hardware_class,
            "runtime": device.runtime,
        }
        for device in devices
    ]


def _ago(moment: dt.datetime | None, now: dt.datetime) -> str:
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


@operator_required
def _device_bulk(request):
    form = DeviceBulkForm(request.POST)
    back = _back_to(request, reverse("devices:list"))
    if not form.is_valid():
        for field, errors in form.errors.items():
            messages.error(request, f"{field.replace('_', ' ')}: {' '.join(errors)}" if field != "__all__" else errors)
        return HttpResponseRedirect(back)
    data = form.cleaned_data
    ids = data["device_ids"]
    actor = actor_of(request)
    try:
        if data["action"] == BulkAction.REVOKE:
            if not _confirmed(request):
                return _confirm(
                    request,
                    title=f"Revoke {len(ids)} device(s)?",
                    message="Their certificates go on the revocation list and their credentials stop working. "
                    "A revoked device must enroll again with a new token.",
                    action=reverse("devices:list"),
                    button=f"Revoke {len(ids)} device(s)",
                    cancel_url=back,
                    items=ids,
                    hidden=[("action", BulkAction.REVOKE), ("next", back), *(("device_ids", i) for i in ids)],
                    ask_reason=True,
                )
            devices = list(Device.objects.filter(pk__in=ids))
            if len(devices) != len(set(ids)):
                raise ApiError("device_not_found", "Some selected devices do not exist; nothing was revoked.")
            reason = request.POST.get("reason", "")[:500]
            for device in devices:
                services.device_revoke(actor=actor, device=device, reason=reason)
            messages.success(request, f"Revoked {len(devices)} device(s).")
        elif data["action"] == BulkAction.SET_GROUP:
            count = services.devices_bulk_update(actor=actor, device_ids=ids, group=data["group"])
            target = data["group"].name if data["group"] else "no group"
            messages.success(request, f"Moved {count} device(s) to {target}.")
        else:
            tag = [data["tag"]]
            adding = data["action"] == BulkAction.ADD_TAG
            count = services.devices_bulk_update(
                actor=actor, device_ids=ids, add_tags=tag if adding else None, remove_tags=None if adding else tag
            )
            verb = "Tagged" if adding else "Untagged"
            messages.success(request, f"{verb} {count} device(s) {'with' if adding else 'from'} {data['tag']}.")
    except ApiError as exc:
        messages.error(request, error_message(exc))
    return HttpResponseRedirect(back)


# --- one device -----------------------------------------------------------------------------------

CHART_WINDOWS = {
    # window name: (span, step) -- a step keeps every chart to a few hundred points
    "1h": (dt.timedelta(hours=1), dt.timedelta(minutes=1)),
    "24h": (dt.timedelta(hours=24), dt.timedelta(minutes=5)),
    "7d": (dt.timedelta(days=7), dt.timedelta(hours=1)),
}


def inference_series(*, device_id: str, window: str, now: dt.datetime | None = None) -> dict:
    """The device's inference rollups over a window, merged per step and across model versions.

    Latency quantiles come from merged histograms (exact across minutes and versions, see
    telemetry/histogram.py), never from averaging per-minute p95s. Steps without data are null, so the
    charts show gaps instead of drawing lines across silence.
    """
    span, step = CHART_WINDOWS[window]
    now = now or timezone.now()
    step_s = int(step.total_seconds())
    end = int(now.timestamp()) // step_s * step_s + step_s
    start = end - int(span.total_seconds())
    rows = (
        InferenceRollup.objects.filter(device_id=device_id, bucket__gte=dt.datetime.fromtimestamp(start, dt.UTC))
        .order_by()
        .values_list(
            "bucket",
            "model_name",
            "model_version",
            "count",
            "error_count",
            "cloud_count",
            "confidence_sum",
            "confidence_count",
            "latency_hist",
        )
    )
    steps: dict[int, dict] = {}
    total_hist: dict[str, int] = {}
    totals = {"count": 0, "errors": 0, "cloud": 0, "conf_sum": 0.0, "conf_n": 0}
    versions: set[str] = set()
    for bucket, model_name, model_version, count, errors, cloud, conf_sum, conf_n, hist in rows:
        slot = int(bucket.timestamp()) // step_s * step_s
        acc = steps.setdefault(slot, {"count": 0, "errors": 0, "conf_sum": 0.0, "conf_n": 0, "hist": {}})
        acc["count"] += count
        acc["errors"] += errors
        acc["conf_sum"] += conf_sum
        acc["conf_n"] += conf_n
        histogram.merge(acc["hist"], hist or {})
        histogram.merge(total_hist, hist or {})
        totals["count"] += count
        totals["errors"] += errors
        totals["cloud"] += cloud
        totals["conf_sum"] += conf_sum
        totals["conf_n"] += conf_n
        versions.add(f"{model_name}@{model_version}")
    series = {"t": [], "p50": [], "p95": [], "confidence": [], "error_rate": [], "count": []}
    for slot in range(start, end, step_s):
        acc = steps.get(slot)
        series["t"].append(slot)
        if acc is None:
            for name in ("p50", "p95", "confidence", "error_rate", "count"):
                series[name].append(None)
            continue
        series["p50"].append(_round(histogram.quantile(acc["hist"], 0.50)))
        series["p95"].append(_round(histogram.quantile(acc["hist"], 0.95)))
        series["confidence"].append(_round(acc["conf_sum"] / acc["conf_n"], 3) if acc["conf_n"] else None)
        series["error_rate"].append(_round(100.0 * acc["errors"] / acc["count"], 2) if acc["count"] else None)
        series["count"].append(acc["count"])
    summary = {
        "count": totals["count"],
        "error_rate": 100.0 * totals["errors"] / totals["count"] if totals["count"] else None,
        "cloud_rate": 100.0 * totals["cloud"] / totals["count"] if totals["count"] else None,
        "confidence": totals["conf_sum"] / totals["conf_n"] if totals["conf_n"] else None,
        "p95": histogram.quantile(total_hist, 0.95),
        "versions": sorted(versions),
    }
    return {"series": series, "summary": summary}


def _heartbeats(device_id: str, window: str, now: dt.datetime) -> dict:
    span, step = CHART_WINDOWS[window]
    step_s = int(step.total_seconds())
    end = dt.datetime.fromtimestamp(int(now.timestamp()) // step_s * step_s + step_s, dt.UTC)
    return heartbeat_series(device_id=device_id, start=end - span, end=end, step=step)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _device_or_404(device_id: str) -> Device:
    return get_object_or_404(selectors.device_detail().select_related("enrollment_token"), pk=device_id)


@viewer_required
@require_GET
def device_detail(request, device_id: str):
    """Identity, certificate, presence, group and tags, audit history and inference charts. The presence
    card is the fragment htmx polls."""
    device = _device_or_404(device_id)
    window = request.GET.get("window", "24h")
    if window not in CHART_WINDOWS:
        window = "24h"
    now = timezone.now()
    certificate = device.valid_certificates[0] if device.valid_certificates else None
    context = {
        "device": device,
        "certificate": certificate,
        "certificate_days_left": (certificate.not_after - now).days if certificate else None,
        "poll_seconds": DEVICE_POLL_SECONDS,
        "now": now,
        "presence_history": device_presence_history(device_id=device.id, limit=PRESENCE_HISTORY_ROWS),
    }
    if not is_htmx(request):
        context |= {
            "certificates": device.certificates.order_by("-not_after")[:10],
            "audit_events": AuditEvent.objects.filter(object_type="device", object_id=device.id)[:50],
            "edit_form": DeviceEditForm(
                initial={
                    "name": device.name,
                    "group": device.group,
                    "tags": " ".join(tag.name for tag in device.tags.all()),
                }
            ),
            "window": window,
            "windows": list(CHART_WINDOWS),
            "inference": inference_series(device_id=device.id, window=window, now=now),
            "heartbeats": _heartbeats(device.id, window, now),
            "updates": device_updates(device.id),
            **device_policy(request, device),
        }
    return render_page(request, "devices/device_detail.html", "devices/_device_presence.html", context)


@operator_required
@require_POST
def device_edit(request, device_id: str):
    device = _device_or_404(device_id)
    form = DeviceEditForm(request.POST)
    if form.is_valid():
        try:
            services.device_update(
                actor=actor_of(request),
                device=device,
                name=form.cleaned_data["name"],
                group=form.cleaned_data["group"],
                tags=form.cleaned_data["tags"],
            )
            messages.success(request, f"Saved {device.id}.")
        except ApiError as exc:
            messages.error(request, error_message(exc))
    else:
        for field, errors in form.errors.items():
            messages.error(request, f"{field}: {' '.join(errors)}")
    return HttpResponseRedirect(reverse("devices:detail", args=[device.id]))


@operator_required
@require_http_methods(["GET", "POST"])
def device_revoke(request, device_id: str):
    device = _device_or_404(device_id)
    detail_url = reverse("devices:detail", args=[device.id])
    if not _confirmed(request):
        return _confirm(
            request,
            title=f"Revoke {device.id}?",
            message="Its certificates go on the revocation list, the broker refuses it and its credentials stop "
            "working. A revoked device must enroll again with a new token.",
            action=reverse("devices:revoke", args=[device.id]),
            button="Revoke device",
            cancel_url=detail_url,
            hidden=[("next", _back_to(request, detail_url))],
            ask_reason=True,
        )
    services.device_revoke(actor=actor_of(request), device=device, reason=request.POST.get("reason", "")[:500])
    messages.success(request, f"Revoked {device.id}.")
    return HttpResponseRedirect(_back_to(request, detail_url))


@operator_required
@require_POST
def device_approve(request, device_id: str):
    """Approve a pending device. From the approvals list (htmx) the answer is the updated row."""
    device = _device_or_404(device_id)
    error = None
    try:
        device = services.device_approve(actor=actor_of(request), device=device)
    except ApiError as exc:
        error = error_message(exc)
    if is_htmx(request):
        return render_page(
            request, "devices/approvals.html", "devices/_approval_row.html", {"device": device, "error": error}
        )
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"Approved {device.id}: its certificate is issued.")
    return HttpResponseRedirect(_back_to(request, reverse("devices:detail", args=[device.id])))


@viewer_required
@require_GET
def approvals(request):
    """Devices that enrolled with a token that needs approval, oldest id first."""
    pending = selectors.device_list().filter(status=DeviceStatus.PENDING).select_related("enrollment_token")
    page = keyset_page(pending, request.GET, size=PAGE_SIZE)
    return render_page(request, "devices/approvals.html", "devices/_approval_list.html", {"page": page})


# --- enrollment tokens ----------------------------------------------------------------------------


ISSUED_TOKEN_SESSION_KEY = "console_issued_token"  # noqa: S105 - a session key name, not a secret


def _token_context(request, form: EnrollmentTokenForm, issued: dict | None = None) -> dict:
    tokens = EnrollmentToken.objects.select_related("group", "created_by").prefetch_related("tags")
    return {
        "form": form,
        "issued": issued,
        "page": keyset_page(tokens, request.GET, size=PAGE_SIZE, descending=True),
        "now": timezone.now(),
    }


@viewer_required
@require_http_methods(["GET", "POST"])
def tokens(request):
    """Enrollment tokens: the list, and (operators) a form that creates one and shows its secret once.

    After a create the browser is redirected here (so a reload cannot create a second token), and this
    page takes the secret out of the session as it shows it: it is in the session store only between the
    POST and the GET that follows it, and no later page can show it again.
    """
    if request.method == "POST":
        return _token_create(request)
    issued = request.session.pop(ISSUED_TOKEN_SESSION_KEY, None)
    context = _token_context(request, EnrollmentTokenForm(), issued)
    response = render_page(request, "devices/tokens.html", None if issued else "devices/_token_list.html", context)
    if issued:
        response["Cache-Control"] = "no-store"
    return response


@operator_required
def _token_create(request):
    form = EnrollmentTokenForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            created = services.enrollment_token_create(
                actor=actor_of(request),
                name=data["name"],
                group=data["group"],
                tags=data["tags"],
                max_uses=data["max_uses"],
                expires_at=form.expires_at(),
                auto_accept=data["auto_accept"],
            )
        except ApiError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, error_message(exc))
        else:
            request.session[ISSUED_TOKEN_SESSION_KEY] = {"name": created.token.name, "secret": created.secret}
            return HttpResponseRedirect(reverse("devices:tokens"))
    return render_page(request, "devices/tokens.html", None, _token_context(request, form), status=400)


@operator_required
@require_http_methods(["GET", "POST"])
def token_revoke(request, token_id: int):
    token = get_object_or_404(EnrollmentToken, pk=token_id)
    tokens_url = reverse("devices:tokens")
    if not _confirmed(request):
        return _confirm(
            request,
            title=f"Revoke enrollment token {token.name!r}?",
            message=f"Devices can no longer enroll with {token.prefix}…; devices already enrolled with it "
            "stay enrolled.",
            action=reverse("devices:token-revoke", args=[token.pk]),
            button="Revoke token",
            cancel_url=tokens_url,
        )
    services.enrollment_token_revoke(actor=actor_of(request), token=token)
    messages.success(request, f"Revoked enrollment token {token.name!r}.")
    return HttpResponseRedirect(tokens_url)


# --- groups ---------------------------------------------------------------------------------------


def _groups_context(request, form: GroupCreateForm) -> dict:
    page = keyset_page(DeviceGroup.objects.all(), request.GET, key="name", size=100)
    # Device counts for the groups on this page only, from the (group, id) index alone: an index-only
    # scan of those groups' entries, where Count("devices") would join and read the whole device table.
    counts = dict(
        Device.objects.filter(group_id__in=[group.pk for group in page.items])
        .order_by()
        .values_list("group_id")
        .annotate(n=Count("*"))
    )
    for group in page.items:
        group.device_count = counts.get(group.pk, 0)
    return {"form": form, "page": page}


@viewer_required
@require_http_methods(["GET", "POST"])
def groups(request):
    if request.method == "POST":
        return _group_create(request)
    context = _groups_context(request, GroupCreateForm())
    return render_page(request, "devices/groups.html", "devices/_group_list.html", context)


@operator_required
def _group_create(request):
    form = GroupCreateForm(request.POST)
    if form.is_valid():
        try:
            group = services.group_create(actor=actor_of(request), **form.cleaned_data)
            messages.success(request, f"Created group {group.name}.")
            return HttpResponseRedirect(reverse("devices:groups"))
        except ApiError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, error_message(exc))
    return render_page(request, "devices/groups.html", None, _groups_context(request, form), status=400)


@operator_required
@require_POST
def group_edit(request, name: str):
    group = get_object_or_404(DeviceGroup, name=name)
    form = GroupEditForm(request.POST)
    if form.is_valid():
        services.group_update(actor=actor_of(request), group=group, description=form.cleaned_data["description"])
        messages.success(request, f"Saved group {group.name}.")
    return HttpResponseRedirect(reverse("devices:groups"))


@operator_required
@require_http_methods(["GET", "POST"])
def group_delete(request, name: str):
    group = get_object_or_404(DeviceGroup, name=name)
    groups_url = reverse("devices:groups")
    if not _confirmed(request):
        return _confirm(
            request,
            title=f"Delete group {group.name}?",
            message="Its devices stay enrolled and become ungrouped; tokens that put devices in it stop doing so.",
            action=reverse("devices:group-delete", args=[group.name]),
            button="Delete group",
            cancel_url=groups_url,
        )
    services.group_delete(actor=actor_of(request), group=group)
    messages.success(request, f"Deleted group {name}.")
    return HttpResponseRedirect(groups_url)
