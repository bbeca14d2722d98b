"""Console pages of updates: releases, rollout creation with a dry-run preview, the rollout page (stages,
cohort progress, gates against thresholds), and every rollout action through the console."""

import re

import pytest
from django.test import Client
from django.utils import timezone

from devices.models import Device, DeviceStatus
from fleet.celery import app as celery_app
from fleet.models import AuditEvent, Role
from fleet.services import Actor
from ota import rollouts, services
from ota.models import Artifact, DirectorState, Rollout, RolloutState
from tests.factories import make_operator
from tests.ota.conftest import release

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")
HTMX = {"HTTP_HX_REQUEST": "true"}
GATES = {"gate_error_rate": "0.02", "gate_install_failure_rate": "0.05", "min_samples": "5"}


@pytest.fixture
def repo(db, monkeypatch):
    """Signed update repositories, tasks run in process, retained MQTT pointers recorded, not published."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    monkeypatch.setattr("fleet.mqtt.publish_retained", lambda messages: None)
    services.repositories_init(actor=SYSTEM, root_keys=3, root_threshold=2)
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture
def fleet(repo) -> Artifact:
    """40 active rpi4 devices and a release for them."""
    Device.objects.bulk_create(
        [Device(id=f"cam-{n:03d}", hardware_class="rpi4", status=DeviceStatus.ACTIVE) for n in range(40)]
    )
    return release(version="2.0.0")


def html(response) -> str:
    return response.content.decode()


def form_for(artifact: Artifact, **overrides) -> dict:
    return {
        "name": "detector 2",
        "artifact": artifact.pk,
        "shares": "10, 50, 100",
        "soak_minutes": "10",
        "on_failure": "pause",
        **GATES,
        **overrides,
    }


@pytest.fixture
def admin_client(db) -> Client:
    user, _token = make_operator(role=Role.ADMIN)
    client = Client()
    client.force_login(user)
    return client


def test_releases_page_shows_hashes_and_only_an_admin_revokes_after_confirmation(admin_client, operator_client, repo):
    artifact = release(version="1.0.0")
    page = html(operator_client.get("/releases/"))
    assert artifact.sha256[:16] in page
    assert artifact.target_path in page
    assert "Revoke…" not in page  # as in the API, revoking a release is for admins
    assert operator_client.post(f"/releases/{artifact.pk}/revoke/", {"confirmed": "yes"}).status_code == 403
    assert "Revoke…" in html(admin_client.get("/releases/"))
    assert admin_client.get(f"/releases/{artifact.pk}/revoke/").status_code == 200
    artifact.refresh_from_db()
    assert artifact.revoked_at is None
    admin_client.post(f"/releases/{artifact.pk}/revoke/", {"confirmed": "yes", "reason": "bad weights"})
    artifact.refresh_from_db()
    assert artifact.revoked_at is not None


def test_preview_shows_stage_sizes_before_anything_is_written(operator_client, fleet):
    response = operator_client.post("/rollouts/preview/", form_for(fleet), **HTMX)
    sizes = [int(n) for n in re.findall(r"data-stage-size>(\d+)<", html(response))]
    assert sum(sizes) == 40
    assert len(sizes) == 3
    assert not Rollout.objects.exists()

    bad = operator_client.post("/rollouts/preview/", form_for(fleet, shares="50, 10"), **HTMX)
    assert "increasing" in html(bad)


def test_rollout_created_started_paused_resumed_and_rolled_back_from_the_console(operator_client, fleet):
    created = operator_client.post("/rollouts/", form_for(fleet))
    assert created.status_code == 302
    rollout = Rollout.objects.get()
    assert rollout.state == RolloutState.DRAFT
    assert rollout.stages[0]["gates"]["error_rate"] == {"threshold": 0.02, "min_samples": 5}
    url = created["Location"]

    ask = operator_client.get(f"{url}start/")
    assert "Start rollout detector 2?" in html(ask)
    operator_client.post(f"{url}start/", {"confirmed": "yes"})
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.RUNNING

    page = html(operator_client.get(url))
    assert 'data-stage="0" class="current"' in page
    assert 'data-state="assigned"' in page

    operator_client.post(f"{url}pause/")
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PAUSED
    operator_client.post(f"{url}resume/")
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.RUNNING

    operator_client.post(f"{url}advance/")  # no confirmation posted: nothing happens
    rollout.refresh_from_db()
    assert rollout.current_stage == 0
    operator_client.post(f"{url}advance/", {"confirmed": "yes"})
    rollout.refresh_from_db()
    assert rollout.current_stage == 1

    operator_client.post(f"{url}rollback/", {"confirmed": "yes"})
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ROLLED_BACK
    actor = f"user:{operator_client.user.username}"
    actions = set(AuditEvent.objects.filter(object_type="rollout", actor=actor).values_list("action", flat=True))
    assert {"rollout.create", "rollout.start", "rollout.pause", "rollout.resume", "rollout.rollback"} <= actions


def test_invalid_transition_is_reported_not_a_500(operator_client, fleet):
    rollout = rollouts.rollout_create(
        actor=SYSTEM, name="r", artifact=fleet, selector={}, stages=[{"share": 1.0, "soak_seconds": 0}]
    )
    response = operator_client.post(f"/rollouts/{rollout.pk}/pause/", follow=True)
    assert response.status_code == 200
    assert "Only a running rollout can pause" in html(response)


def test_rollout_page_shows_the_last_gate_evaluation_and_polls_progress(viewer_client, fleet):
    rollout = rollouts.rollout_create(
        actor=SYSTEM,
        name="r",
        artifact=fleet,
        selector={},
        stages=[{"share": 0.5, "soak_seconds": 0, "gates": {"error_rate": {"threshold": 0.02, "min_samples": 5}}}],
    )
    rollouts.rollout_start(actor=SYSTEM, rollout=rollout)
    rollouts.rollout_evaluate(rollout=rollout, now=timezone.now())
    page = html(viewer_client.get(f"/rollouts/{rollout.pk}/"))
    assert 'data-gate="error_rate"' in page
    assert "gate-wait" in page  # no inference yet: not enough samples is never a pass
    assert "rollout.gate_evaluation" in page

    fragment = html(viewer_client.get(f"/rollouts/{rollout.pk}/", **HTMX))
    assert fragment.lstrip().startswith('<div id="rollout-progress"')
    assert 'hx-trigger="every 5s"' in fragment


def test_viewer_sees_no_rollout_control_and_is_refused(viewer_client, fleet):
    rollout = rollouts.rollout_create(
        actor=SYSTEM, name="r", artifact=fleet, selector={}, stages=[{"share": 1.0, "soak_seconds": 0}]
    )
    rollouts.rollout_start(actor=SYSTEM, rollout=rollout)
    for path in (f"/rollouts/{rollout.pk}/", "/rollouts/", "/releases/"):
        page = html(viewer_client.get(path))
        assert 'method="post"' not in page.replace('action="/logout/"', "").split("</header>", 1)[1]
        assert "Roll back…" not in page and "Create draft" not in page and "Revoke…" not in page
    for path, body in (
        (f"/rollouts/{rollout.pk}/pause/", {}),
        (f"/rollouts/{rollout.pk}/rollback/", {"confirmed": "yes"}),
        ("/rollouts/", form_for(fleet)),
        ("/rollouts/preview/", form_for(fleet)),
        (f"/releases/{fleet.pk}/revoke/", {"confirmed": "yes"}),
    ):
        assert viewer_client.post(path, body).status_code == 403, path
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.RUNNING


def test_dashboard_shows_live_rollouts_and_the_releases_the_director_assigns(viewer_client, fleet):
    # Three devices of another class, on 1.0.0: the rollout of 2.0.0 (rpi4 only) never targets them.
    Device.objects.bulk_create([Device(id=f"jet-{n}", hardware_class="jetson", status="active") for n in range(3)])
    v1 = release(version="1.0.0", hardware=("jetson",))
    services.director_assign(device_ids=["jet-0", "jet-1", "jet-2"], artifact=v1)
    rollout = rollouts.rollout_create(
        actor=SYSTEM, name="to v2", artifact=fleet, selector={}, stages=[{"share": 0.5, "soak_seconds": 0}]
    )
    rollouts.rollout_start(actor=SYSTEM, rollout=rollout)
    page = html(viewer_client.get("/"))
    assert f'data-rollout="{rollout.pk}"' in page
    shown = {
        m.group(1): int(m.group(2)) for m in re.finditer(r'<td>(detector@[\d.]+)</td><td class="num">(\d+)</td>', page)
    }
    on_v2 = DirectorState.objects.filter(artifact=fleet).count()
    assert on_v2 > 0
    assert shown == {"detector@1.0.0": 3, "detector@2.0.0": on_v2}


def test_device_page_shows_desired_release_rollout_state_and_update_history(viewer_client, fleet):
    rollout = rollouts.rollout_create(
        actor=SYSTEM, name="to v2", artifact=fleet, selector={}, stages=[{"share": 1.0, "soak_seconds": 0}]
    )
    rollouts.rollout_start(actor=SYSTEM, rollout=rollout)
    now = timezone.now()
    for seq, state, reason in ((1, "downloading", ""), (2, "failed", "hash_mismatch")):
        services.update_status_record(
            report=services.StatusReport(
                device_id="cam-007", seq=seq, ts=now, target=fleet.target_path, state=state, reason=reason
            ),
            received_at=now,
        )
    page = html(viewer_client.get("/devices/cam-007/"))
    assert "<code>detector@2.0.0</code>" in page
    assert 'data-update="2"' in page and "hash_mismatch" in page
    assert "Failed" in page


def test_rollout_page_charts_each_gate_against_its_threshold_and_the_cohort_against_control(viewer_client, fleet):
    import datetime as dt
    import json

    from telemetry.models import InferenceRollup

    rollout = rollouts.rollout_create(
        actor=SYSTEM,
        name="charted",
        artifact=fleet,
        selector={},
        stages=[
            # Passing but soaking: the rollout stays in its first stage and each tick adds a point.
            {"share": 0.5, "soak_seconds": 3600, "gates": {"error_rate": {"threshold": 0.1, "min_samples": 5}}},
            {"share": 1.0, "soak_seconds": 0},
        ],
    )
    rollouts.rollout_start(actor=SYSTEM, rollout=rollout)
    rollout.refresh_from_db()
    minute = (rollout.stage_started_at + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
    cohort = set(rollout.devices.filter(stage=0).values_list("device_id", flat=True))
    # The cohort on the new release errs on 3 of 50 inferences; the control, on the old one, never.
    InferenceRollup.objects.bulk_create(
        InferenceRollup(
            bucket=minute,
            device_id=device_id,
            model_name="detector",
            model_version="2.0.0" if device_id in cohort else "1.0.0",
            count=50,
            error_count=3 if device_id in cohort else 0,
        )
        for device_id in Device.objects.values_list("id", flat=True)
    )
    for later in (2, 3):
        rollouts.rollout_evaluate(rollout=rollout, now=rollout.stage_started_at + dt.timedelta(minutes=later))

    page = html(viewer_client.get(f"/rollouts/{rollout.pk}/"))
    assert 'data-gate-chart="error_rate"' in page and 'data-compare-chart="error_rate"' in page
    assert "uPlot.iife.min.js" in page
    charts = json.loads(
        re.search(r'<script id="gate-charts-data" type="application/json">(.*?)</script>', page, re.S)[1]
    )
    assert charts["points"] == 2
    gate = charts["gates"]["error_rate"]
    assert gate["threshold"] == [0.1, 0.1]
    assert gate["t"][1] - gate["t"][0] == 60  # drawn at each evaluation's own time, a minute apart
    assert gate["value"] == pytest.approx([0.06, 0.06])  # 6 % in the cohort - 0 % in the control
    assert charts["compare"]["error_rate"]["cohort"] == [6.0, 6.0]
    assert charts["compare"]["error_rate"]["control"] == [0.0, 0.0]
    # The polled fragment carries the charts too, so they follow new evaluations without a reload.
    assert 'data-gate-chart="error_rate"' in html(viewer_client.get(f"/rollouts/{rollout.pk}/", **HTMX))
