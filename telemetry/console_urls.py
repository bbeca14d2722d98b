"""Console routes of telemetry (the REST API's are in telemetry/api/urls.py)."""

from django.urls import path

from telemetry import views

app_name = "telemetry"

urlpatterns = [
    path("telemetry/", views.ingest, name="ingest"),
    path("telemetry/dead-letters/<int:letter_id>/", views.dead_letter, name="dead-letter"),
]
