from django.contrib import admin
from django.urls import include, path

from fleet import views
from telemetry.api.views import MetricsView

urlpatterns = [
    path("api/v1/", include("fleet.api.urls")),
    path("ota/", include("ota.urls")),
    path("v1/", include("policies.urls")),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", MetricsView.as_view(), name="metrics"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    # Console pages: the shell here, each app's pages from its console_urls.py.
    path("", views.dashboard, name="dashboard"),
    path("", include("devices.console_urls")),
    path("", include("ota.console_urls")),
    path("", include("policies.console_urls")),
    path("", include("telemetry.console_urls")),
]
