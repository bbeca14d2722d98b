"""The console in a real browser (Debian's chromium driven by Playwright) against a live server on the
test PostgreSQL: an operator's first day end to end, live counters, and a viewer who can change nothing.

Screenshots of the main pages go to test-artifacts/screenshots/ (the best ones are copied by hand into
docs/screenshots/).
"""

import datetime as dt
import os
import re
from pathlib import Path

import httpx
import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect, sync_playwright

from devices.models import Device, DeviceStatus
from fleet.models import AuditEvent, Role
from fleet_agent.identity import build_csr_pem, generate_private_key
from telemetry import histogram
from telemetry.models import InferenceRollup
from tests.factories import make_operator, spend_cloud_budget

# Playwright's sync API runs an event loop in this thread; Django refuses ORM calls from a thread with a
# running loop unless told this is safe. It is: the loop only drives the browser, and the test's ORM calls
# never overlap with it.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page_for(browser, live_server, transactional_db):
    """A logged-in browser page for a new account of the given role."""
    contexts = []

    def login(role: str) -> Page:
        user, _token = make_operator(role=role)
        context = browser.new_context(viewport={"width": 1360, "height": 900}, base_url=live_server.url)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.goto("/login/")
        page.fill("input[name=username]", user.username)
        page.fill("input[name=password]", PASSWORD)
        page.click("button:has-text('Log in')")
        expect(page.locator("h1")).to_have_text("Fleet")
        return page

    yield login
    for context in contexts:
        context.close()


def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def enroll_over_http(base_url: str, token: str, device_id: str, hardware_class: str = "jetson-orin") -> dict:
    """What the agent does at first boot: make a key, send a CSR with the token to the public API."""
    key = generate_private_key()
    response = httpx.post(
        f"{base_url}/api/v1/enroll/",
        json={
            "token": token,
            "csr": build_csr_pem(key, device_id),
            "hardware_class": hardware_class,
            "runtime": "onnxruntime",
            "agent_version": "0.1.0",
        },
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


def create_token(page: Page, name: str, *, auto_accept: bool, max_uses: int = 5) -> str:
    page.click("nav >> text=Enrollment tokens")
    page.fill("input[name=name]", name)
    page.fill("input[name=max_uses]", str(max_uses))
    page.set_checked("input[name=auto_accept]", auto_accept)
    page.click("button:has-text('Create token')")
    secret = page.locator("[data-secret]").inner_text()
    assert secret.startswith("fet_")
    return secret


def add_inference_history(device_id: str) -> None:
    """An hour of per-minute rollups, as the telemetry rollup task writes them."""
    now = timezone.now().replace(second=0, microsecond=0)
    rows = []
    for minute in range(60):
        hist: dict = {}
        histogram.add(hist, 20 + minute % 7, 40)
        histogram.add(hist, 45 + minute % 11, 3)
        rows.append(
            InferenceRollup(
                bucket=now - dt.timedelta(minutes=60 - minute),
                device_id=device_id,
                model_name="detector",
                model_version="1.4.0",
                count=43,
                error_count=minute % 5 == 0,
                confidence_sum=43 * (0.82 + (minute % 9) / 100),
                confidence_count=43,
                latency_sum_ms=43 * 22.0,
                latency_hist=hist,
            )
        )
    InferenceRollup.objects.bulk_create(rows)


def add_heartbeats_and_dead_letters(device_id: str) -> None:
    """Heartbeats of the last hour and a few malformed messages, through the ingest worker's batch step."""
    import json

    from fleet_agent import schemas
    from telemetry.ingest import InboundMessage, ingest_batch

    now = timezone.now()
    beats = []
    for n in range(1, 61):
        body = schemas.heartbeat_message(
            seq=n,
            cpu_pct=35 + (n * 7) % 30,
            mem_pct=55 + (n % 10),
            disk_pct=62.0,
            temp_c=48 + (n % 12) / 2,
            models=[{"name": "detector", "version": "1.4.0", "slot": "a"}],
            buffer_depth=(n * 13) % 40,
            dropped=0 if n < 50 else 2,
            agent_version="0.1.0",
            ts_ms=int((now - dt.timedelta(minutes=61 - n)).timestamp() * 1000),
        )
        beats.append(InboundMessage(f"devices/{device_id}/heartbeat", json.dumps(body).encode(), now))
    bad = [
        InboundMessage(f"devices/{device_id}/telemetry", b"{truncated", now),
        InboundMessage(f"devices/{device_id}/telemetry", b'{"v": 99, "seq": 1, "ts": 0}', now),
        InboundMessage("devices/not a device/telemetry", b"{}", now),
    ]
    ingest_batch(beats + bad)


def add_policies(*, group) -> None:
    """A fleet policy and a group policy that overrides a preference (published in process, no broker)."""
    from unittest import mock

    from fleet.celery import app as celery_app
    from policies import services as policy_services
    from tests.policies.conftest import PRIVACY_FIRST, SYSTEM

    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    try:
        with mock.patch("fleet.mqtt.publish_retained", lambda messages: None):
            policy_services.policy_create(actor=SYSTEM, scope="fleet", document=PRIVACY_FIRST)
            policy_services.policy_create(
                actor=SYSTEM, scope="group", group=group, document={"tasks": {"chat": {"prefer": "local"}}}
            )
    finally:
        celery_app.conf.task_always_eager = previous


def add_cloud_usage(device_ids: list[str]) -> None:
    """Cloud requests of the day through the gateway's budget reservation (what it does before forwarding)."""
    for n, device in enumerate(Device.objects.filter(pk__in=device_ids).order_by("pk")):
        tokens = 300_000 + 30_000 * n  # under the 1,000,000 a day of PRIVACY_FIRST
        spend_cloud_budget(device, tokens=tokens, cost_micros=tokens * 40)


def start_a_rollout(hardware: list[str]) -> None:
    """The fleet's cameras on detector 1.4.0, and a rollout of 1.5.0 in its first stage."""
    from django.db import transaction

    from fleet.services import Actor
    from ota import rollouts
    from ota import services as ota_services
    from tests.ota.conftest import release

    system = Actor.system("tests")
    v1 = release(version="1.4.0", hardware=tuple(hardware))
    ota_services.director_assign(device_ids=[f"cam-{n:03d}" for n in range(61)], artifact=v1)
    v2 = release(version="1.5.0", hardware=tuple(hardware))
    gates = {"error_rate": {"threshold": 0.02, "min_samples": 50}}
    rollout = rollouts.rollout_create(
        actor=system,
        name="detector 1.5 canary",
        artifact=v2,
        selector={},
        stages=[{"share": share, "soak_seconds": 1800, "gates": gates} for share in (0.1, 0.5, 1.0)],
    )
    with transaction.atomic():
        rollouts.rollout_start(actor=system, rollout=rollout)
    rollouts.rollout_evaluate(rollout=rollout)


def test_operator_first_day_token_enroll_approve_tag_revoke(page_for, live_server):
    page = page_for(Role.OPERATOR)
    screenshot(page, "dashboard-empty")

    # A token that accepts devices on its own; a device enrolls with it through the real API.
    secret = create_token(page, "line-3 cameras", auto_accept=True)
    screenshot(page, "enrollment-token-created")
    enrolled = enroll_over_http(live_server.url, secret, "cam-line3-01")
    assert enrolled["status"] == "active"
    enroll_over_http(live_server.url, secret, "cam-line3-02", hardware_class="rpi5")
    page.reload()
    expect(page.locator("tr[data-token] >> nth=0")).to_contain_text("2 / 5")
    assert secret not in page.content()  # shown once: a reload does not bring it back
    assert page.locator("tr[data-token]").count() == 1  # and does not create another token

    # The devices appear in the list; typing in the search narrows it without a page load (htmx).
    page.click("nav >> text=Devices")
    expect(page.locator("tr[data-device]")).to_have_count(2)
    page.fill("input[name=id_prefix]", "cam-line3-02")
    expect(page.locator("tr[data-device]")).to_have_count(1)
    expect(page).to_have_url(re.compile(r"id_prefix=cam-line3-02"))
    page.fill("input[name=id_prefix]", "")
    expect(page.locator("tr[data-device]")).to_have_count(2)

    # Bulk: select both, tag them.
    page.check("[data-select-all]")
    expect(page.locator("[data-selected-count]")).to_have_text("2 selected")
    page.fill("#bulk-form input[name=tag]", "line-3")
    page.click("#bulk-form button:has-text('Add tag')")
    expect(page.locator(".message.success")).to_contain_text("Tagged 2 device(s)")
    assert Device.objects.filter(tags__name="line-3").count() == 2
    screenshot(page, "devices")

    # A token that needs approval: the device waits in Approvals until an operator approves it.
    approval_secret = create_token(page, "field returns", auto_accept=False, max_uses=1)
    waiting = enroll_over_http(live_server.url, approval_secret, "cam-return-7")
    assert waiting["status"] == "pending" and waiting["certificate"] is None
    page.click("nav >> text=Approvals")
    row = page.locator('tr[data-device="cam-return-7"]')
    expect(row).to_contain_text("Pending approval")
    screenshot(page, "approvals")
    row.locator("button:has-text('Approve')").click()
    expect(page.locator('tr[data-device="cam-return-7"]')).to_contain_text("Active")
    assert Device.objects.get(pk="cam-return-7").status == DeviceStatus.ACTIVE
    polled = httpx.get(
        f"{live_server.url}/api/v1/device/", headers={"Authorization": f"Device {waiting['device_token']}"}
    )
    assert polled.json()["certificate"].startswith("-----BEGIN CERTIFICATE-----")

    # The device page: identity, certificate, charts drawn from the inference rollups.
    add_inference_history("cam-line3-01")
    add_heartbeats_and_dead_letters("cam-line3-01")
    page.goto("/devices/cam-line3-01/?window=1h")
    expect(page.locator("#device-presence")).to_contain_text("expires")
    expect(page.locator(".chart .uplot")).to_have_count(6)  # inference and heartbeat charts
    expect(page.locator(".summary >> nth=0")).to_contain_text("detector@1.4.0")
    screenshot(page, "device")

    # Revoke, through the confirmation step.
    page.click("a:has-text('Revoke…')")
    expect(page.locator("h1")).to_have_text("Revoke cam-line3-01?")
    screenshot(page, "revoke-confirmation")
    assert Device.objects.get(pk="cam-line3-01").status == DeviceStatus.ACTIVE
    page.fill("input[name=reason]", "camera stolen")
    page.click("button:has-text('Revoke device')")
    expect(page.locator(".message.success")).to_contain_text("Revoked cam-line3-01")
    expect(page.locator("h1 .badge")).to_have_text("Revoked")
    assert AuditEvent.objects.get(action="device.revoke", object_id="cam-line3-01").after["reason"] == "camera stolen"
    refused = httpx.get(
        f"{live_server.url}/api/v1/device/", headers={"Authorization": f"Device {enrolled['device_token']}"}
    )
    assert refused.status_code in (401, 403)

    page.click("nav >> text=Dashboard")
    screenshot(page, "dashboard")


def test_dashboard_counters_follow_the_fleet_without_a_reload(page_for, live_server, monkeypatch):
    monkeypatch.setattr("fleet.views.DASHBOARD_POLL_SECONDS", 1)
    page = page_for(Role.VIEWER)
    expect(page.locator('[data-counter="offline"]')).to_have_text("0")
    page.evaluate("window.__notReloaded = true")

    from tests.factories import make_token

    enroll_over_http(live_server.url, make_token(), "cam-live-1")

    expect(page.locator('[data-counter="offline"]')).to_have_text("1", timeout=10_000)
    assert page.evaluate("window.__notReloaded") is True


def test_viewer_finds_no_write_control_and_a_forged_post_is_refused(page_for, live_server):
    from tests.factories import make_device, make_token

    make_device("cam-seen-1")
    make_device("cam-wait-1", token=make_token(auto_accept=False))
    page = page_for(Role.VIEWER)

    for path in (
        "/",
        "/devices/",
        "/devices/cam-seen-1/",
        "/approvals/",
        "/enrollment-tokens/",
        "/groups/",
        "/releases/",
    ):
        page.goto(path)
        expect(page.locator("main")).to_be_visible()
        assert page.locator("main form[method=post]").count() == 0, path
        assert page.locator("main button").count() == 0, path
        assert page.locator("main a.button").count() == 0, path
        assert page.locator("[hx-post]").count() == 0, path
        if path == "/devices/cam-seen-1/":
            screenshot(page, "device-viewer")

    # The page shows no control, and the server refuses the request anyway, even with a valid CSRF token.
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    for path, form in (
        ("/devices/cam-seen-1/revoke/", {"confirmed": "yes"}),
        ("/devices/cam-wait-1/approve/", {}),
        ("/enrollment-tokens/", {"name": "sneaky", "max_uses": "1"}),
        ("/releases/upload/", {"name": "sneaky", "version": "1", "runtime": "onnx", "hardware_classes": "rpi5"}),
    ):
        response = page.request.post(path, form=form, headers={"X-CSRFToken": csrf, "Referer": live_server.url})
        assert response.status == 403, path
    assert Device.objects.get(pk="cam-seen-1").status == DeviceStatus.ACTIVE
    assert Device.objects.get(pk="cam-wait-1").status == DeviceStatus.PENDING


def test_device_list_pages_through_a_larger_fleet_with_next_and_previous(page_for, update_repository):
    from devices import services
    from fleet.services import Actor
    from tests.factories import make_device, make_token

    system = Actor.system("tests")
    sites = [services.group_create(actor=system, name=name) for name in ("plant-north", "plant-south", "lab")]
    hardware = ["jetson-orin", "rpi5", "coral-devboard"]
    now = timezone.now()
    for n in range(62):
        token = make_token(group=sites[n % 3], tags=["line-" + str(n % 4 + 1)])
        make_device(f"cam-{n:03d}", token=token, hardware_class=hardware[n % 3], runtime="onnxruntime")
        if n % 5:
            services.device_mark_seen(device_id=f"cam-{n:03d}", online=n % 7 != 0, at=now - dt.timedelta(minutes=n))
    for n in range(3):
        make_device(f"door-{n}", token=make_token(auto_accept=False), hardware_class="rpi5")
    services.device_revoke(actor=system, device=Device.objects.get(pk="cam-061"), reason="retired")
    add_inference_history("cam-001")
    add_heartbeats_and_dead_letters("cam-001")
    add_policies(group=sites[1])
    add_cloud_usage([f"cam-{n:03d}" for n in range(0, 60, 3)])
    start_a_rollout(hardware)

    page = page_for(Role.OPERATOR)
    expect(page.locator('[data-counter="pending"]')).to_have_text("3")
    expect(page.locator('[data-budget="fleet:day:tokens"] .usage-bar')).to_be_visible()
    screenshot(page, "dashboard-fleet")

    page.click("nav >> text=Devices")
    expect(page.locator("tr[data-device]")).to_have_count(50)
    screenshot(page, "devices-fleet", full_page=False)
    page.click("a[rel=next]")
    expect(page.locator("tr[data-device]")).to_have_count(15)
    expect(page).to_have_url(re.compile(r"after=cam-049"))
    expect(page.locator("tr[data-device] >> nth=0")).to_have_attribute("data-device", "cam-050")
    page.click("a[rel=prev]")
    expect(page.locator("tr[data-device]")).to_have_count(50)
    expect(page.locator("tr[data-device] >> nth=0")).to_have_attribute("data-device", "cam-000")

    # Filters combine (same FilterSet as the API) and keep paging within the filtered set.
    page.select_option("select[name=group]", "plant-south")
    page.select_option("select[name=online]", "true")
    expect(page.locator("tr[data-device]")).to_have_count(
        Device.objects.filter(group__name="plant-south", online=True).count()
    )
    page.goto("/devices/cam-001/?window=1h")
    expect(page.locator(".chart .uplot")).to_have_count(6)
    expect(page.locator('tr[data-field="tasks.chat.prefer"]')).to_contain_text("group:plant-south")
    screenshot(page, "device-fleet")

    page.click("nav >> text=Telemetry")
    expect(page.locator("tr[data-letter]")).to_have_count(3)
    page.select_option("select[name=reason]", "invalid_topic")
    expect(page.locator("tr[data-letter]")).to_have_count(1)
    page.select_option("select[name=reason]", "")
    expect(page.locator("tr[data-letter]")).to_have_count(3)
    screenshot(page, "telemetry")


@pytest.fixture
def update_repository(transactional_db, monkeypatch):
    from fleet.celery import app as celery_app
    from fleet.services import Actor
    from ota import services as ota_services

    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    monkeypatch.setattr("fleet.mqtt.publish_retained", lambda messages: None)
    ota_services.repositories_init(actor=Actor.system("tests"), root_keys=3, root_threshold=2)
    yield
    celery_app.conf.task_always_eager = previous


def test_operator_previews_starts_watches_pauses_and_rolls_back_a_rollout(page_for, update_repository, monkeypatch):
    from ota import rollouts
    from ota import services as ota_services
    from ota.models import Rollout, RolloutState
    from tests.ota.conftest import release

    monkeypatch.setattr("ota.views.ROLLOUT_POLL_SECONDS", 1)
    Device.objects.bulk_create(
        [Device(id=f"cam-{n:03d}", hardware_class="rpi4", status=DeviceStatus.ACTIVE) for n in range(200)]
    )
    v1 = release(version="1.0.0")
    ota_services.director_assign(device_ids=[f"cam-{n:03d}" for n in range(200)], artifact=v1)
    v2 = release(version="2.0.0")
    page = page_for(Role.OPERATOR)

    page.click("nav >> text=Rollouts")
    page.click("summary:has-text('New rollout')")
    page.fill("#rollout-form input[name=name]", "detector 2.0 to line 3")
    page.select_option("#rollout-form select[name=artifact]", str(v2.pk))
    page.fill("#rollout-form input[name=shares]", "5, 25, 100")
    page.click("button:has-text('Preview stage sizes')")
    sizes = page.locator("[data-stage-size]")
    expect(sizes).to_have_count(3)
    assert sum(int(n) for n in sizes.all_inner_texts()) == 200
    screenshot(page, "rollout-new")
    assert not Rollout.objects.exists()  # a preview writes nothing
    page.click("button:has-text('Create draft')")
    expect(page.locator("[data-rollout-state]")).to_have_text("Draft")

    page.click("a:has-text('Start…')")
    page.click("button:has-text('Start')")
    expect(page.locator("[data-rollout-state]")).to_have_text("Running")
    expect(page.locator('tr[data-stage="0"]')).to_have_class("current")
    rollout = Rollout.objects.get()

    # The first cohort installs and reports; the gate tick evaluates. The page follows without a reload.
    from django.db import transaction

    now = timezone.now()
    with transaction.atomic():  # as the ingest worker's batch
        for device_id in rollout.devices.filter(stage=0).values_list("device_id", flat=True):
            ota_services.update_status_record(
                report=ota_services.StatusReport(
                    device_id=device_id, seq=1, ts=now, target=v2.target_path, state="succeeded"
                ),
                received_at=now,
            )
    # Their inferences: the cohort on 2.0.0 errs once in 100, the control on 1.0.0 never (under the 2 % gate).
    rollout.refresh_from_db()
    cohort = set(rollout.devices.filter(stage=0).values_list("device_id", flat=True))
    InferenceRollup.objects.bulk_create(
        InferenceRollup(
            bucket=rollout.stage_started_at,
            device_id=f"cam-{n:03d}",
            model_name="detector",
            model_version="2.0.0" if f"cam-{n:03d}" in cohort else "1.0.0",
            count=100,
            error_count=1 if f"cam-{n:03d}" in cohort else 0,
        )
        for n in range(200)
    )
    for minutes in (1, 2, 3):
        rollouts.rollout_evaluate(rollout=rollout, now=now + dt.timedelta(minutes=minutes))
    expect(page.locator('tr[data-stage="0"] [data-state="succeeded"]')).to_be_visible(timeout=10_000)
    expect(page.locator('tr[data-gate="error_rate"]')).to_be_visible(timeout=10_000)
    # Each gate's value against its threshold, and the cohort against the control, drawn from the evaluations.
    expect(page.locator('[data-gate-chart="error_rate"] canvas')).to_have_count(1, timeout=10_000)
    expect(page.locator('[data-compare-chart="error_rate"] canvas')).to_have_count(1)
    expect(page.locator('[data-compare-chart="error_rate"] .u-legend')).to_contain_text("control")
    page.locator("#gate-charts").scroll_into_view_if_needed()
    screenshot(page, "rollout")

    page.click("a:has-text('Advance now…')")
    page.click("button:has-text('Advance now')")
    expect(page.locator('tr[data-stage="1"]')).to_have_class("current")
    page.click("button:has-text('Pause')")
    expect(page.locator("[data-rollout-state]")).to_have_text("Paused")
    page.click("a:has-text('Roll back…')")
    expect(page.locator("h1")).to_contain_text("Roll back detector 2.0 to line 3?")
    page.click("button:has-text('Roll back')")
    expect(page.locator("[data-rollout-state]")).to_have_text("Rolled back")
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ROLLED_BACK


def test_operator_edits_a_policy_sees_a_validation_error_then_saves(page_for, monkeypatch):
    import json

    from fleet.celery import app as celery_app
    from policies import services as policy_services
    from policies.models import Policy
    from tests.policies.conftest import PRIVACY_FIRST, SYSTEM

    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    monkeypatch.setattr("fleet.mqtt.publish_retained", lambda messages: None)
    try:
        policy_services.policy_create(actor=SYSTEM, scope="fleet", document=PRIVACY_FIRST)
        page = page_for(Role.OPERATOR)
        page.click("nav >> text=Policies")
        page.click('tr[data-policy="fleet"] a')
        editor = page.locator("textarea[name=document]")
        broken = dict(PRIVACY_FIRST, data_classes={"public": "allow", "health": "maybe"})
        editor.fill(json.dumps(broken, indent=2))
        page.click("button:has-text('Save and publish')")
        expect(page.locator('[data-error-path="data_classes.health"]')).to_be_visible()
        assert "maybe" in editor.input_value()  # the operator's text is kept to fix
        screenshot(page, "policy-error")
        assert Policy.objects.get().version == 1

        editor.fill(json.dumps(dict(PRIVACY_FIRST, budgets={"day": {"tokens": 250000}}), indent=2))
        page.click("button:has-text('Save and publish')")
        expect(page.locator(".message.success")).to_contain_text("Saved the fleet policy")
        expect(page.locator("h1 .badge")).to_have_text("version 2")
    finally:
        celery_app.conf.task_always_eager = previous


def test_operator_uploads_a_model_with_a_progress_bar_and_sees_the_signed_release(page_for, update_repository):
    import hashlib

    from ota.models import Artifact

    model = bytes(range(256)) * 16 * 1024  # 4 MiB: the browser reports upload progress on the way
    page = page_for(Role.OPERATOR)
    page.click("nav >> text=Releases")
    form = page.locator("form[data-upload]")
    form.locator("input[type=file]").set_input_files(
        {"name": "detector.onnx", "mimeType": "application/octet-stream", "buffer": model}
    )
    form.locator("input[name=name]").fill("detector")
    form.locator("input[name=version]").fill("3.0.0")
    form.locator("input[name=runtime]").fill("onnxruntime")
    form.locator("input[name=hardware_classes]").fill("jetson-orin rpi5")
    page.click("button:has-text('Upload and sign')")

    expect(page.locator("[data-upload-progress]")).to_have_attribute("data-done", "ok", timeout=30_000)
    assert page.locator("[data-upload-progress] progress").evaluate("el => el.value") == 100
    expect(page.locator("[data-upload-percent]")).to_have_text("100 %")
    sha256 = hashlib.sha256(model).hexdigest()
    expect(page.locator("[data-uploaded-release] >> nth=0")).to_contain_text("detector@3.0.0")
    expect(page.locator('[data-upload-result] [data-field="sha256"]')).to_have_text(sha256)
    expect(page.locator('[data-upload-result] [data-field="signature"]')).not_to_be_empty()
    artifact = Artifact.objects.get()
    assert (artifact.sha256, artifact.length) == (sha256, len(model))
    # The list below refreshes itself and shows the new release.
    expect(page.locator(f'tr[data-release="{artifact.pk}"]')).to_contain_text("detector")
    screenshot(page, "release-upload")

    # The same version again: the service's refusal, shown by the field.
    form.locator("input[type=file]").set_input_files(
        {"name": "detector.onnx", "mimeType": "application/octet-stream", "buffer": b"other weights"}
    )
    form.locator("input[name=name]").fill("detector")
    form.locator("input[name=version]").fill("3.0.0")
    form.locator("input[name=runtime]").fill("onnxruntime")
    form.locator("input[name=hardware_classes]").fill("rpi5")
    page.click("button:has-text('Upload and sign')")
    expect(page.locator('[data-upload-result] [data-error-field="version"]')).to_contain_text("exists already")
    assert Artifact.objects.count() == 1


def test_device_page_lists_presence_transitions_as_the_device_connects_and_drops(page_for, monkeypatch):
    import json

    from fleet_agent import schemas
    from telemetry.ingest import InboundMessage, ingest_batch
    from tests.factories import make_device

    monkeypatch.setattr("devices.views.DEVICE_POLL_SECONDS", 1)
    make_device("cam-presence")
    page = page_for(Role.VIEWER)
    page.goto("/devices/cam-presence/")
    expect(page.locator("#presence-history")).to_contain_text("No connect or disconnect recorded yet")

    def status(seq: int, state: str) -> None:
        """A status message through the ingest worker's batch step, as the broker delivers it."""
        body = schemas.status_message(seq=seq, state=state)
        ingest_batch([InboundMessage("devices/cam-presence/status", json.dumps(body).encode(), timezone.now())])

    status(2, "online")  # connects (its will reserved seq 1)
    expect(page.locator('#presence-history tr[data-presence="connect"]')).to_have_count(1, timeout=10_000)
    expect(page.locator('[data-field="presence"]')).to_contain_text("online")
    status(5, "offline")  # says goodbye
    status(7, "online")  # reconnects (will: seq 6)
    status(6, "offline")  # and drops: the broker publishes its will
    expect(page.locator('#presence-history tr[data-presence="will"]')).to_have_count(1, timeout=10_000)
    rows = page.locator("#presence-history tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.nth(0)).to_contain_text("Connection lost (last will)")
    expect(rows.nth(1)).to_contain_text("Connected")
    expect(rows.nth(2)).to_contain_text("Disconnected cleanly")
    expect(page.locator('[data-field="presence"]')).to_contain_text("offline")
    page.locator("#device-presence").screenshot(path=str(SCREENSHOTS / "device-presence.png"))


def test_dashboard_shows_cloud_usage_against_budgets_and_follows_it_live(page_for, monkeypatch):
    from fleet.celery import app as celery_app
    from policies import services as policy_services
    from tests.factories import make_device
    from tests.policies.conftest import PRIVACY_FIRST, SYSTEM

    monkeypatch.setattr("fleet.views.DASHBOARD_POLL_SECONDS", 1)
    monkeypatch.setattr("fleet.mqtt.publish_retained", lambda messages: None)
    devices = [make_device(f"cam-llm-{n}")[0].device for n in range(4)]
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True  # publishing the policy runs in process
    try:
        policy_services.policy_create(
            actor=SYSTEM, scope="fleet", document=dict(PRIVACY_FIRST, budgets={"day": {"tokens": 10_000, "cost": 2.0}})
        )
    finally:
        celery_app.conf.task_always_eager = previous

    def spend(device, tokens: int) -> None:
        spend_cloud_budget(device, tokens=tokens, cost_micros=tokens * 100)

    spend(devices[0], 6_000)
    page = page_for(Role.VIEWER)
    tokens = page.locator('[data-budget="fleet:day:tokens"]')
    expect(tokens.locator("[data-budget-percent]")).to_have_text("15.0 %")  # 6,000 of 4 x 10,000
    expect(tokens.locator(".usage-bar")).to_have_attribute("aria-valuenow", "15.0")
    page.evaluate("window.__notReloaded = true")
    spend(devices[1], 10_000)  # this one uses its whole day
    expect(tokens.locator("[data-budget-percent]")).to_have_text("40.0 %", timeout=10_000)
    expect(tokens.locator("td.num")).to_have_text("1")  # devices at their limit
    assert page.evaluate("window.__notReloaded") is True
    page.locator("#cloud-budgets").screenshot(path=str(SCREENSHOTS / "dashboard-budgets.png"))
