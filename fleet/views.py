from django.conf import settings
from django.contrib.auth import views as auth_views
from django.db import connection
from django.db.models import Count
from django.http import JsonResponse
from django.utils import timezone

from devices.models import Device, DeviceStatus
from fleet.console import render_page, viewer_required
from fleet.models import AuditEvent
from ota.views import dashboard_updates
from policies.selectors import budget_usage
from telemetry.views import ingest_summary

DASHBOARD_POLL_SECONDS = 10


def healthz(request):
    """Liveness + database reachability, for load balancers and compose health checks."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


class LoginView(auth_views.LoginView):
    template_name = "fleet/login.html"
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    pass


def fleet_counts() -> dict:
    """Devices by status and presence, active devices by hardware class and by group: one pass over the
    device table (a GROUP BY of a few hundred small groups at most) instead of one COUNT per figure."""
    counts = {"online": 0, "offline": 0, "pending": 0, "revoked": 0, "total": 0}
    hardware: dict[str, dict[str, int]] = {}
    by_group: dict[int | None, int] = {}  # active devices per group id (None: no group), for the budgets
    rows = (
        Device.objects.order_by().values_list("status", "online", "hardware_class", "group_id").annotate(n=Count("*"))
    )
    for status, online, hardware_class, group_id, n in rows:
        counts["total"] += n
        if status == DeviceStatus.ACTIVE:
            counts["online" if online else "offline"] += n
            per_class = hardware.setdefault(hardware_class or "unknown", {"online": 0, "offline": 0})
            per_class["online" if online else "offline"] += n
            by_group[group_id] = by_group.get(group_id, 0) + n
        elif status in (DeviceStatus.PENDING, DeviceStatus.REVOKED):
            counts[status] += n
    by_hardware = [
        {"hardware_class": name, **figures, "total": figures["online"] + figures["offline"]}
        for name, figures in sorted(hardware.items(), key=lambda item: -sum(item[1].values()))
    ]
    return {"counts": counts, "by_hardware": by_hardware, "active_by_group": by_group}


@viewer_required
def dashboard(request):
    """The fleet at a glance. The live part (counters, hardware, recent changes) is the fragment that
    htmx polls every few seconds."""
    counts = fleet_counts()
    context = {
        **counts,
        "ingest": ingest_summary(),
        **dashboard_updates(),
        "budgets": budget_usage(at=timezone.now(), active_by_group=counts.pop("active_by_group")),
        "currency": settings.LLM_CURRENCY,
        "recent_audit": AuditEvent.objects.all()[:15],
        "poll_seconds": DASHBOARD_POLL_SECONDS,
    }
    return render_page(request, "fleet/dashboard.html", "fleet/_dashboard_live.html", context)
