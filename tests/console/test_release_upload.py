"""Uploading a model from the console: the API's validation and service (one code path), the signed
release shown with its hashes and signature, refusals inline, and a viewer refused by the server."""

import hashlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from fleet.models import AuditEvent
from ota.models import Artifact
from tests.console.test_rollout_pages import HTMX, html, repo  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db

MODEL = b"\x00onnx weights\x01" * 4096


def upload_form(**overrides) -> dict:
    return {
        "file": SimpleUploadedFile("detector.onnx", MODEL),
        "name": "detector",
        "version": "3.1.0",
        "runtime": "onnxruntime",
        "hardware_classes": "jetson-orin, rpi5",
        **overrides,
    }


def test_operator_uploads_a_model_and_sees_the_signed_release_with_hashes_and_signature(operator_client, repo):  # noqa: F811
    assert 'enctype="multipart/form-data"' in html(operator_client.get("/releases/"))
    response = operator_client.post("/releases/upload/", upload_form(), **HTMX)
    assert response.status_code == 201
    artifact = Artifact.objects.get()
    assert (artifact.name, artifact.version, artifact.hardware_classes) == (
        "detector",
        "3.1.0",
        ["jetson-orin", "rpi5"],
    )
    assert artifact.sha256 == hashlib.sha256(MODEL).hexdigest() and artifact.length == len(MODEL)
    page = html(response)
    assert f'data-uploaded-release="{artifact.pk}"' in page
    assert artifact.sha256 in page
    targets_version = AuditEvent.objects.get(action="ota.release.create").after["targets_version"]
    assert f'data-field="targets-version">{targets_version}<' in page
    assert 'data-field="signature"' in page and "same sha256 and length" in page
    # The list the page refreshes afterwards shows it.
    assert f'data-release="{artifact.pk}"' in html(operator_client.get("/releases/", **HTMX))


def test_bad_upload_is_refused_per_field_and_stores_nothing(operator_client, repo):  # noqa: F811
    response = operator_client.post("/releases/upload/", upload_form(version="", hardware_classes="a b/c"), **HTMX)
    assert response.status_code == 400
    page = html(response)
    assert 'data-error-field="version"' in page and 'data-error-field="hardware_classes"' in page
    missing = operator_client.post("/releases/upload/", upload_form(file=""), **HTMX)
    assert missing.status_code == 400 and 'data-error-field="file"' in html(missing)
    assert not Artifact.objects.exists()


def test_self_test_fields_are_json_like_the_apis_and_blank_means_none(operator_client, repo):  # noqa: F811
    with_test = upload_form(self_test_input='{"image": "frame-1.jpg"}', self_test_expected=' {"label": "person"} ')
    assert operator_client.post("/releases/upload/", with_test, **HTMX).status_code == 201
    blank = upload_form(version="3.2.0", self_test_input="", self_test_expected="  ")
    assert operator_client.post("/releases/upload/", blank, **HTMX).status_code == 201
    tests = dict(Artifact.objects.values_list("version", "self_test_input"))
    assert tests == {"3.1.0": {"image": "frame-1.jpg"}, "3.2.0": None}
    assert Artifact.objects.get(version="3.1.0").self_test_expected == {"label": "person"}
    bad = operator_client.post("/releases/upload/", upload_form(version="3.3.0", self_test_input="{not json"), **HTMX)
    assert bad.status_code == 400 and 'data-error-field="self_test_input"' in html(bad)
    assert not Artifact.objects.filter(version="3.3.0").exists()


def test_duplicate_version_is_refused_with_the_services_conflict(operator_client, repo):  # noqa: F811
    assert operator_client.post("/releases/upload/", upload_form(), **HTMX).status_code == 201
    again = operator_client.post("/releases/upload/", upload_form(), **HTMX)
    assert again.status_code == 409
    assert 'data-error-field="version"' in html(again) and "exists already" in html(again)
    assert Artifact.objects.count() == 1


def test_plain_form_post_without_javascript_redirects_with_a_message(operator_client, repo):  # noqa: F811
    response = operator_client.post("/releases/upload/", upload_form(), follow=True)
    assert response.status_code == 200
    assert "Released detector@3.1.0" in html(response)


def test_viewer_sees_no_upload_form_and_is_refused(viewer_client, repo):  # noqa: F811
    page = html(viewer_client.get("/releases/"))
    assert "release-upload" not in page and 'type="file"' not in page
    assert viewer_client.post("/releases/upload/", upload_form(), **HTMX).status_code == 403
    assert not Artifact.objects.exists()
