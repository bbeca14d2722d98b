from django.urls import path
from rest_framework.routers import SimpleRouter

from policies.api import views

router = SimpleRouter(trailing_slash=True)
router.register("policies", views.PolicyViewSet, basename="policy")

urlpatterns = [
    path("devices/<str:device_id>/effective-policy/", views.EffectivePolicyView.as_view(), name="effective-policy"),
    path("devices/<str:device_id>/llm-usage/", views.DeviceUsageView.as_view(), name="device-llm-usage"),
    path("llm-usage/", views.UsageView.as_view(), name="llm-usage"),
    path("device/policy/", views.DevicePolicyView.as_view(), name="device-policy"),
    *router.urls,
]
