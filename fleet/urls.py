from django.contrib import admin
from django.urls import include, path

from fleet import views

urlpatterns = [
    path("api/v1/", include("fleet.api.urls")),
    path("v1/", include("policies.urls")),
    path("healthz", views.healthz, name="healthz"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", views.dashboard, name="dashboard"),
]
