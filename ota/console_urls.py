"""Console routes of updates (the REST API's are in ota/api/urls.py)."""

from django.urls import path

from ota import views

app_name = "ota"

urlpatterns = [
    path("releases/", views.releases, name="releases"),
    path("releases/upload/", views.release_upload, name="release-upload"),
    path("releases/<int:artifact_id>/revoke/", views.release_revoke, name="release-revoke"),
    path("rollouts/", views.rollout_list, name="rollouts"),
    path("rollouts/preview/", views.rollout_preview, name="rollout-preview"),
    path("rollouts/<int:rollout_id>/", views.rollout_detail, name="rollout"),
    path("rollouts/<int:rollout_id>/<slug:action>/", views.rollout_action, name="rollout-action"),
]
