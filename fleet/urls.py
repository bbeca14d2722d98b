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
    path("", views.dashboard, name="dashboard"),
]
