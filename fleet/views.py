from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render

from devices.models import Device, DeviceStatus
from fleet.models import AuditEvent


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


@login_required
def dashboard(request):
    counts = {
        "online": Device.objects.filter(status=DeviceStatus.ACTIVE, online=True).count(),
        "offline": Device.objects.filter(status=DeviceStatus.ACTIVE, online=False).count(),
        "pending": Device.objects.filter(status=DeviceStatus.PENDING).count(),
        "revoked": Device.objects.filter(status=DeviceStatus.REVOKED).count(),
    }
    recent_audit = AuditEvent.objects.all()[:20]
    return render(request, "fleet/dashboard.html", {"counts": counts, "recent_audit": recent_audit})
