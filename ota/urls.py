"""The TUF repositories, mounted at /ota/ by fleet/urls.py (outside /api/v1/: these are file paths
fixed by the TUF client workflow, not REST resources)."""

from django.urls import path, re_path

from ota.api import repository

urlpatterns = [
    re_path(
        r"^image/targets/(?P<name>[^/]+)/(?P<version>[^/]+)/(?P<hashed>[0-9a-f]{64}\.[^/]+)$",
        repository.image_target,
        name="ota-image-target",
    ),
    path("image/<str:filename>", repository.image_metadata, name="ota-image-metadata"),
    path("director/<str:filename>", repository.director_metadata, name="ota-director-metadata"),
]
