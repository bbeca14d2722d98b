from django.urls import path

from telemetry.api import views

urlpatterns = [
    path("telemetry/devices/<str:device_id>/records/", views.DeviceRecordsView.as_view(), name="telemetry-records"),
    path(
        "telemetry/devices/<str:device_id>/heartbeats/",
        views.DeviceHeartbeatsView.as_view(),
        name="telemetry-heartbeats",
    ),
    # Presence belongs to the device; the history is written by the ingest worker, so it lives here.
    path("devices/<str:device_id>/presence/", views.DevicePresenceView.as_view(), name="device-presence"),
    path("telemetry/model-versions/", views.ModelVersionAggregatesView.as_view(), name="telemetry-model-versions"),
    path("telemetry/dead-letters/", views.DeadLetterListView.as_view(), name="telemetry-dead-letters"),
    path("telemetry/counters/", views.IngestCountersView.as_view(), name="telemetry-counters"),
]
