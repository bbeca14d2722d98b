from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from fleet.api import views

router = SimpleRouter(trailing_slash=True)
router.register("audit-events", views.AuditEventViewSet, basename="audit-event")
router.register("operators", views.OperatorViewSet, basename="operator")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(permission_classes=[]), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[]), name="api-docs"),
    path("me/", views.MeView.as_view(), name="me"),
    path("", include("devices.api.urls")),
    path("ota/", include("ota.api.urls")),
    path("", include("policies.api.urls")),
    path("", include("telemetry.api.urls")),
    *router.urls,
]
