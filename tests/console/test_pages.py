"""Console pages through Django's test client: what each role sees, what each action changes, and how the
device list pages at scale (keyset, no OFFSET, no full count)."""

import datetime as dt
import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from devices import services
from devices.models import Device, DeviceGroup, DeviceStatus, EnrollmentToken
from fleet.models import AuditEvent
from fleet.services import Actor
from telemetry import histogram
from telemetry.models import InferenceRollup
from tests.factories import make_device, make_token

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")
HTMX = {"HTTP_HX_REQUEST": "true"}


def enrolled(device_id: str, **kwargs) -> Device:
    result, _key = make_device(device_id, **kwargs)
    return result.device


def pending(device_id: str) -> Device:
    return enrolled(device_id, token=make_token(auto_accept=False))


def html(response) -> str:
    return response.content.decode()


def device_ids_in(response) -> list[str]:
    return re.findall(r'<tr data-device="([^"]+)"', html(response))


# --- access ---------------------------------------------------------------------------------------

CONSOLE_PAGES = ["dashboard", "devices:list", "devices:approvals", "devices:tokens", "devices:groups"]


@pytest.mark.parametrize("name", CONSOLE_PAGES)
def test_anonymous_visitor_is_sent_to_login(name):
    response = Client().get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_login_page_logs_an_operator_in_and_out(operator_client):
    user = operator_client.user
    client = Client()
    response = client.post("/login/", {"username": user.username, "password": "correct horse battery"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    client.post("/logout/")
    assert client.get("/").status_code == 302


# --- dashboard ------------------------------------------------------------------------------------


def counter(response, name: str) -> int:
    return int(re.search(rf'data-counter="{name}">(\d+)<', html(response)).group(1))


def test_dashboard_counts_devices_by_status_and_presence(viewer_client):
    enrolled("cam-online-1", hardware_class="jetson")
    enrolled("cam-online-2", hardware_class="jetson")
    enrolled("cam-offline-1", hardware_class="rpi")
    for device_id in ("cam-online-1", "cam-online-2"):
        services.device_mark_seen(device_id=device_id, online=True)
    pending("cam-pending-1")
    services.device_revoke(actor=SYSTEM, device=enrolled("cam-revoked-1"))

    response = viewer_client.get("/")

    assert response.status_code == 200
    assert (counter(response, "online"), counter(response, "offline")) == (2, 1)
    assert (counter(response, "pending"), counter(response, "revoked")) == (1, 1)
    assert "jetson" in html(response) and "rpi" in html(response)
    assert "device.revoke" in html(response)  # recent audit events


def test_dashboard_answers_htmx_polls_with_the_live_fragment_only(viewer_client):
    enrolled("cam-1")
    full = viewer_client.get("/")
    fragment = viewer_client.get("/", **HTMX)
    assert "<html" in html(full) and 'id="dashboard-live"' in html(full)
    assert "<html" not in html(fragment)
    assert html(fragment).lstrip().startswith('<div id="dashboard-live"')
    assert 'hx-trigger="every 10s"' in html(fragment)
    assert "HX-Request" in fragment["Vary"]


# --- device list ----------------------------------------------------------------------------------


def test_device_list_pages_by_keyset_in_both_directions(viewer_client, monkeypatch):
    monkeypatch.setattr("devices.views.PAGE_SIZE", 2)
    for n in range(5):
        enrolled(f"cam-{n}")

    first = viewer_client.get("/devices/")
    assert device_ids_in(first) == ["cam-0", "cam-1"]
    assert "Previous" not in html(first)
    second = viewer_client.get("/devices/?after=cam-1")
    assert device_ids_in(second) == ["cam-2", "cam-3"]
    last = viewer_client.get("/devices/?after=cam-3")
    assert device_ids_in(last) == ["cam-4"]
    assert "Next" not in html(last)
    back = viewer_client.get("/devices/?before=cam-4")
    assert device_ids_in(back) == ["cam-2", "cam-3"]
    assert 'href="?after=cam-3"' in html(back)


def test_device_list_reads_a_page_without_offset_or_counting_the_table(viewer_client):
    for n in range(3):
        enrolled(f"cam-{n}")
    with CaptureQueriesContext(connection) as queries:
        response = viewer_client.get("/devices/?after=cam-0&status=active")
    assert device_ids_in(response) == ["cam-1", "cam-2"]
    sql = " ".join(q["sql"].upper() for q in queries.captured_queries)
    assert "OFFSET" not in sql
    assert "COUNT(" not in sql
    assert "LIMIT 51" in sql


def test_device_list_filters_with_the_api_filterset(viewer_client):
    lab = services.group_create(actor=SYSTEM, name="lab")
    enrolled("cam-a1", hardware_class="jetson", token=make_token(group=lab, tags=["north"]))
    enrolled("cam-a2", hardware_class="rpi")
    enrolled("door-1", hardware_class="jetson")
    services.device_mark_seen(device_id="door-1", online=True)
    pending("cam-p1")

    def listed(query: str) -> list[str]:
        return device_ids_in(viewer_client.get(f"/devices/?{query}"))

    assert listed("id_prefix=cam-a") == ["cam-a1", "cam-a2"]
    assert listed("group=lab") == ["cam-a1"]
    assert listed("tag=north") == ["cam-a1"]
    assert listed("hardware_class=jetson") == ["cam-a1", "door-1"]
    assert listed("status=pending") == ["cam-p1"]
    assert listed("online=true") == ["door-1"]
    assert listed("seen=5m") == ["door-1"]
    assert listed("seen=not-24h") == []


def test_device_list_answers_a_bad_filter_with_400_and_a_bad_cursor_with_the_first_page(viewer_client):
    enrolled("cam-1")
    bad = viewer_client.get("/devices/?status=sleeping")
    assert bad.status_code == 400
    assert "status" in html(bad)
    assert device_ids_in(viewer_client.get("/devices/?after=%00")) == ["cam-1"]
    assert viewer_client.get("/devices/?id_prefix=%00").status_code == 400
    tokens = viewer_client.get("/enrollment-tokens/?after=not-a-number")
    assert tokens.status_code == 200


def test_device_list_filter_returns_only_the_results_fragment_to_htmx(viewer_client):
    enrolled("cam-1")
    fragment = viewer_client.get("/devices/?id_prefix=cam", **HTMX)
    assert "<html" not in html(fragment)
    assert device_ids_in(fragment) == ["cam-1"]


def test_bulk_tag_and_group_go_through_the_bulk_service(operator_client):
    enrolled("cam-1")
    enrolled("cam-2")
    enrolled("cam-3")
    lab = services.group_create(actor=SYSTEM, name="lab")

    response = operator_client.post(
        "/devices/", {"action": "add_tag", "tag": "north", "device_ids": ["cam-1", "cam-2"], "next": "/devices/"}
    )
    assert response.status_code == 302
    assert sorted(Device.objects.filter(tags__name="north").values_list("pk", flat=True)) == ["cam-1", "cam-2"]
    operator_client.post("/devices/", {"action": "set_group", "group": "lab", "device_ids": ["cam-2", "cam-3"]})
    assert sorted(lab.devices.values_list("pk", flat=True)) == ["cam-2", "cam-3"]
    operator_client.post("/devices/", {"action": "remove_tag", "tag": "north", "device_ids": ["cam-1"]})
    assert list(Device.objects.filter(tags__name="north").values_list("pk", flat=True)) == ["cam-2"]
    actor = f"user:{operator_client.user.username}"
    assert AuditEvent.objects.filter(action="device.bulk_update", actor=actor).count() == 3


def test_bulk_revoke_asks_for_confirmation_before_revoking(operator_client):
    enrolled("cam-1")
    enrolled("cam-2")
    ask = operator_client.post("/devices/", {"action": "revoke", "device_ids": ["cam-1", "cam-2"]})
    assert ask.status_code == 200
    assert "Revoke 2 device(s)?" in html(ask)
    assert Device.objects.filter(status=DeviceStatus.REVOKED).count() == 0

    done = operator_client.post(
        "/devices/", {"action": "revoke", "device_ids": ["cam-1", "cam-2"], "confirmed": "yes", "reason": "stolen"}
    )
    assert done.status_code == 302
    assert Device.objects.filter(status=DeviceStatus.REVOKED).count() == 2
    event = AuditEvent.objects.filter(action="device.revoke", object_id="cam-1").get()
    assert event.after["reason"] == "stolen"


def test_bulk_action_on_an_unknown_device_changes_nothing(operator_client):
    enrolled("cam-1")
    response = operator_client.post("/devices/", {"action": "add_tag", "tag": "x", "device_ids": ["cam-1", "ghost-1"]})
    assert response.status_code == 302
    assert not Device.objects.filter(tags__name="x").exists()
    page = operator_client.get("/devices/")
    assert "do not exist" in html(page)


# --- device page ----------------------------------------------------------------------------------


def test_device_page_shows_identity_certificate_presence_and_history(viewer_client):
    device = enrolled("cam-1", hardware_class="jetson", runtime="tensorrt")
    services.device_mark_seen(device_id="cam-1", online=True)
    services.device_update(actor=SYSTEM, device=device, tags=["north"])
    cert = device.certificates.get()

    page = html(viewer_client.get("/devices/cam-1/"))

    assert "jetson" in page and "tensorrt" in page
    assert f"expires {cert.not_after:%Y-%m-%d}" in page
    assert "online" in page
    assert "device.enroll" in page and "device.update" in page
    assert "No inference reported" in page


def test_device_page_charts_merge_rollup_histograms_per_step(viewer_client):
    enrolled("cam-1")
    minute = timezone.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=2)
    for version, latency, errors in (("1.0", 10.0, 0), ("1.1", 200.0, 5)):
        hist: dict = {}
        histogram.add(hist, latency, 50)
        InferenceRollup.objects.create(
            bucket=minute,
            device_id="cam-1",
            model_name="det",
            model_version=version,
            count=50,
            error_count=errors,
            confidence_sum=40.0,
            confidence_count=50,
            latency_sum_ms=latency * 50,
            latency_hist=hist,
        )

    response = viewer_client.get("/devices/cam-1/?window=1h")
    series = response.context["inference"]["series"]
    filled = [i for i, count in enumerate(series["count"]) if count]
    assert len(filled) == 1
    i = filled[0]
    assert series["count"][i] == 100
    assert series["error_rate"][i] == 5.0
    assert series["confidence"][i] == 0.8
    # p50 from the merged histogram lies in the fast version's bucket, p95 in the slow one's.
    assert series["p50"][i] == pytest.approx(10.0, rel=0.05)
    assert series["p95"][i] == pytest.approx(200.0, rel=0.05)
    assert response.context["inference"]["summary"]["versions"] == ["det@1.0", "det@1.1"]
    assert 'id="inference-series"' in html(response)
    assert 'data-chart="latency"' in html(response)


def test_device_page_presence_poll_gets_the_presence_card_only(viewer_client):
    enrolled("cam-1")
    fragment = html(viewer_client.get("/devices/cam-1/", **HTMX))
    assert fragment.lstrip().startswith('<section class="card" id="device-presence"')
    assert "<html" not in fragment


def test_unknown_device_page_is_404(viewer_client):
    assert viewer_client.get("/devices/nope-1/").status_code == 404


def test_device_edit_changes_name_group_and_tags_through_the_service(operator_client):
    enrolled("cam-1")
    services.group_create(actor=SYSTEM, name="lab")
    response = operator_client.post("/devices/cam-1/edit/", {"name": "Front door", "group": "lab", "tags": "a, b"})
    assert response.status_code == 302
    device = Device.objects.get(pk="cam-1")
    assert (device.name, device.group.name) == ("Front door", "lab")
    assert sorted(device.tags.values_list("name", flat=True)) == ["a", "b"]
    assert AuditEvent.objects.filter(action="device.update", object_id="cam-1").exists()


def test_revoking_a_device_needs_the_confirmation_step(operator_client):
    enrolled("cam-1")
    ask = operator_client.get("/devices/cam-1/revoke/")
    assert ask.status_code == 200
    assert 'name="confirmed" value="yes"' in html(ask)
    unconfirmed = operator_client.post("/devices/cam-1/revoke/", {"reason": "lost"})
    assert unconfirmed.status_code == 200  # the confirmation page again
    assert Device.objects.get(pk="cam-1").status == DeviceStatus.ACTIVE

    done = operator_client.post("/devices/cam-1/revoke/", {"reason": "lost", "confirmed": "yes"})
    assert done.status_code == 302
    device = Device.objects.get(pk="cam-1")
    assert device.status == DeviceStatus.REVOKED
    assert device.certificates.filter(revoked_at__isnull=True).count() == 0


# --- approvals ------------------------------------------------------------------------------------


def test_approvals_lists_pending_devices_and_approve_answers_htmx_with_the_row(operator_client):
    pending("cam-p1")
    enrolled("cam-active")
    listing = operator_client.get("/approvals/")
    assert device_ids_in(listing) == ["cam-p1"]

    row = operator_client.post("/devices/cam-p1/approve/", **HTMX)
    assert row.status_code == 200
    assert html(row).lstrip().startswith('<tr data-device="cam-p1"')
    assert "Active" in html(row)
    device = Device.objects.get(pk="cam-p1")
    assert device.status == DeviceStatus.ACTIVE
    assert device.certificates.count() == 1

    again = operator_client.post("/devices/cam-p1/approve/", **HTMX)
    assert "not pending" in html(again)


# --- enrollment tokens ----------------------------------------------------------------------------


def test_token_secret_is_shown_once_and_enrolls_a_device(operator_client):
    services.group_create(actor=SYSTEM, name="lab")
    response = operator_client.post(
        "/enrollment-tokens/",
        {"name": "batch 7", "group": "lab", "tags": "north", "max_uses": 5, "expires_in_days": 7, "auto_accept": "on"},
    )
    assert response.status_code == 302  # post/redirect/get: a reload cannot create a second token
    shown = operator_client.get(response["Location"])
    assert shown["Cache-Control"] == "no-store"
    secret = re.search(r"<code data-secret>(fet_[^<]+)</code>", html(shown)).group(1)
    token = EnrollmentToken.objects.get(name="batch 7")
    assert (token.max_uses, token.group.name, token.auto_accept) == (5, "lab", True)

    assert secret not in html(operator_client.get("/enrollment-tokens/"))
    device = enrolled("cam-1", token=secret)
    assert device.group.name == "lab"
    assert list(device.tags.values_list("name", flat=True)) == ["north"]


def test_token_form_shows_errors_inline(operator_client):
    response = operator_client.post("/enrollment-tokens/", {"name": "", "max_uses": 0, "tags": "bad tag!"})
    assert response.status_code == 400
    assert html(response).count('class="error"') >= 3
    assert not EnrollmentToken.objects.exists()


def test_token_revoke_needs_confirmation(operator_client):
    make_token()
    token = EnrollmentToken.objects.get()
    assert operator_client.get(f"/enrollment-tokens/{token.pk}/revoke/").status_code == 200
    token.refresh_from_db()
    assert token.revoked_at is None
    operator_client.post(f"/enrollment-tokens/{token.pk}/revoke/", {"confirmed": "yes"})
    token.refresh_from_db()
    assert token.revoked_at is not None


# --- groups ---------------------------------------------------------------------------------------


def test_groups_create_edit_and_delete_with_confirmation(operator_client):
    assert operator_client.post("/groups/", {"name": "lab", "description": "bench"}).status_code == 302
    enrolled("cam-1", token=make_token(group=DeviceGroup.objects.get(name="lab")))
    listing = html(operator_client.get("/groups/"))
    assert re.search(r'<td class="num">1</td>', listing)
    duplicate = operator_client.post("/groups/", {"name": "lab"})
    assert duplicate.status_code == 400
    assert "exists already" in html(duplicate)

    operator_client.post("/groups/lab/", {"description": "the bench lab"})
    assert DeviceGroup.objects.get(name="lab").description == "the bench lab"
    operator_client.post("/groups/lab/delete/")
    assert DeviceGroup.objects.filter(name="lab").exists()
    operator_client.post("/groups/lab/delete/", {"confirmed": "yes"})
    assert not DeviceGroup.objects.filter(name="lab").exists()
    assert Device.objects.get(pk="cam-1").group is None


# --- roles and CSRF -------------------------------------------------------------------------------

POST_FORMS = re.compile(r'<form[^>]*method="post"[^>]*>', re.IGNORECASE)


@pytest.mark.parametrize(
    "path", ["/", "/devices/", "/devices/cam-1/", "/approvals/", "/enrollment-tokens/", "/groups/"]
)
def test_viewer_pages_carry_no_write_control(viewer_client, path):
    enrolled("cam-1")
    pending("cam-p1")
    make_token()
    services.group_create(actor=SYSTEM, name="lab")
    page = html(viewer_client.get(path))
    forms = [f for f in POST_FORMS.findall(page) if "/logout/" not in f]
    assert forms == []
    assert "hx-post" not in page
    for control in ("Revoke…", "Reject…", "Approve</button>", "Create token", "Create group", "Add tag", "Delete…"):
        assert control not in page


@pytest.mark.parametrize(
    ("path", "control"),
    [
        ("/devices/", "Revoke…"),
        ("/devices/cam-1/", "Revoke…"),
        ("/approvals/", "Approve</button>"),
        ("/enrollment-tokens/", "Create token"),
        ("/groups/", "Create group"),
    ],
)
def test_operator_pages_carry_the_write_controls(operator_client, path, control):
    enrolled("cam-1")
    pending("cam-p1")
    assert control in html(operator_client.get(path))


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/devices/", {"action": "add_tag", "tag": "x", "device_ids": ["cam-1"]}),
        ("post", "/devices/", {"action": "revoke", "device_ids": ["cam-1"], "confirmed": "yes"}),
        ("post", "/devices/cam-1/edit/", {"name": "mine"}),
        ("get", "/devices/cam-1/revoke/", {}),
        ("post", "/devices/cam-1/revoke/", {"confirmed": "yes"}),
        ("post", "/devices/cam-p1/approve/", {}),
        ("post", "/enrollment-tokens/", {"name": "sneaky", "max_uses": 1}),
        ("post", "/groups/", {"name": "sneaky"}),
        ("post", "/groups/lab/", {"description": "changed"}),
        ("post", "/groups/lab/delete/", {"confirmed": "yes"}),
    ],
)
def test_viewer_forged_writes_are_refused_with_403(viewer_client, method, path, body):
    enrolled("cam-1")
    pending("cam-p1")
    services.group_create(actor=SYSTEM, name="lab")
    audit_before = AuditEvent.objects.count()

    response = getattr(viewer_client, method)(path, body)

    assert response.status_code == 403
    assert AuditEvent.objects.count() == audit_before
    assert Device.objects.get(pk="cam-1").status == DeviceStatus.ACTIVE
    assert Device.objects.get(pk="cam-p1").status == DeviceStatus.PENDING


def test_writes_without_a_csrf_token_are_refused(operator_client):
    enrolled("cam-1")
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator_client.user)
    response = client.post("/devices/cam-1/revoke/", {"confirmed": "yes"})
    assert response.status_code == 403
    assert Device.objects.get(pk="cam-1").status == DeviceStatus.ACTIVE
