"""Console pages of updates: releases and staged rollouts. Every action calls ota.rollouts / ota.services,
the functions the REST API calls, inside a transaction as the API does (they lock the rollout row)."""

import datetime as dt

from django.contrib import messages
from django.db import transaction
from django.db.models import Count
from django.http import HttpResponseRedirect, QueryDict
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from fleet.console import (
    actor_of,
    admin_required,
    error_message,
    is_htmx,
    keyset_page,
    operator_required,
    render_page,
    viewer_required,
)
from fleet.errors import ApiError
from fleet.models import AuditEvent
from ota import rollouts, selectors, services
from ota.api.serializers import ArtifactUploadSerializer
from ota.forms import RolloutForm
from ota.models import Artifact, DirectorState, Rollout, RolloutDevice, RolloutState, UpdateState, UpdateStatusReport

ROLLOUT_POLL_SECONDS = 5
STATE_CHOICES = [("", "any state"), *RolloutState.choices]


# --- releases -------------------------------------------------------------------------------------


@viewer_required
@require_GET
def releases(request):
    """Released model artifacts with their hashes and signing state; operators upload new ones here."""
    page = keyset_page(selectors.artifact_list(), request.GET, size=50, descending=True)
    return render_page(request, "ota/releases.html", "ota/_release_list.html", {"page": page})


SELF_TEST_FIELDS = ("self_test_input", "self_test_expected")


@operator_required  # as the API: operators upload releases (revoking one is an admin's)
@require_POST
def release_upload(request):
    """Upload a model file and sign it into the image repository as a release, with the API's input
    serializer and the API's service (POST /api/v1/ota/artifacts/), so both accept and refuse the same.

    The page's upload.js posts the form with XMLHttpRequest to show the upload's progress and swaps in
    the answer: the new release with its hashes and signature, or the refusal per field. Without
    JavaScript the form is a plain post and the answer is the releases page with a message."""
    # Form input, as the API's multipart: the serializer reads the self-test fields as JSON text.
    form = QueryDict(mutable=True)
    form["file"] = request.FILES.get("file")
    for field in ("name", "version", "runtime", *SELF_TEST_FIELDS):
        value = request.POST.get(field, "").strip()
        if value or field not in SELF_TEST_FIELDS:  # a blank self-test field means none
            form[field] = value
    form.setlist("hardware_classes", request.POST.get("hardware_classes", "").replace(",", " ").split())
    payload = ArtifactUploadSerializer(data=form)
    context: dict = {"artifact": None, "signature": None, "errors": []}
    status = 201
    if not payload.is_valid():
        context["errors"] = [(field, " ".join(str(m) for m in msgs)) for field, msgs in payload.errors.items()]
        status = 400
    else:
        try:
            artifact = services.artifact_upload(actor=actor_of(request), **payload.validated_data)
            context |= {"artifact": artifact, "signature": selectors.release_signature(artifact)}
        except ApiError as exc:
            context["errors"] = [(exc.field or "file", error_message(exc))]
            status = exc.status_code
    if is_htmx(request):
        return render(request, "ota/_release_uploaded.html", context, status=status)
    if context["artifact"]:
        messages.success(request, f"Released {context['artifact']} (sha256 {context['artifact'].sha256}).")
    for field, message in context["errors"]:
        messages.error(request, f"{field}: {message}")
    return HttpResponseRedirect(reverse("ota:releases"))


@admin_required  # as the API: revoking a release is an admin's decision
@require_http_methods(["GET", "POST"])
def release_revoke(request, artifact_id: int):
    artifact = get_object_or_404(Artifact, pk=artifact_id)
    back = reverse("ota:releases")
    if request.POST.get("confirmed") != "yes":
        return render(
            request,
            "fleet/confirm.html",
            {
                "title": f"Revoke release {artifact}?",
                "message": "It leaves the signed image repository: no device will verify or install it any more. "
                "Running rollouts of it cannot continue.",
                "action": reverse("ota:release-revoke", args=[artifact.pk]),
                "button": "Revoke release",
                "cancel_url": back,
                "ask_reason": True,
            },
        )
    try:
        with transaction.atomic():
            services.artifact_revoke(actor=actor_of(request), artifact=artifact, reason=request.POST.get("reason", ""))
        messages.success(request, f"Revoked {artifact}.")
    except ApiError as exc:
        messages.error(request, error_message(exc))
    return HttpResponseRedirect(back)


# --- rollouts -------------------------------------------------------------------------------------


def _rollout_list_context(request, form: RolloutForm) -> dict:
    listed = selectors.rollout_list()
    if request.GET.get("state") in RolloutState.values:
        listed = listed.filter(state=request.GET["state"])
    return {
        "form": form,
        "page": keyset_page(listed, request.GET, size=50, descending=True),
        "params": request.GET,
        "state_choices": STATE_CHOICES,
    }


@viewer_required
@require_http_methods(["GET", "POST"])
def rollout_list(request):
    """Rollouts newest first; operators create a draft here (with a dry-run preview of stage sizes)."""
    if request.method == "POST":
        return _rollout_create(request)
    context = _rollout_list_context(request, RolloutForm())
    return render_page(request, "ota/rollouts.html", "ota/_rollout_list.html", context)


@operator_required
def _rollout_create(request):
    form = RolloutForm(request.POST)
    if form.is_valid():
        try:
            rollout = rollouts.rollout_create(
                actor=actor_of(request),
                name=form.cleaned_data["name"],
                artifact=form.cleaned_data["artifact"],
                selector=form.selector(),
                stages=form.stages(),
                on_failure=form.cleaned_data["on_failure"],
            )
            messages.success(request, f"Created draft rollout {rollout.name}; start it when ready.")
            return HttpResponseRedirect(reverse("ota:rollout", args=[rollout.pk]))
        except ApiError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, error_message(exc))
    return render_page(request, "ota/rollouts.html", None, _rollout_list_context(request, form), status=400)


@operator_required
@require_POST
def rollout_preview(request):
    """The dry run: how many devices each stage would take, for the form as it stands (htmx fragment)."""
    form = RolloutForm(request.POST)
    context = {"form": form, "preview": None, "error": None}
    if form.is_valid():
        try:
            preview = rollouts.rollout_dry_run(
                selector=form.selector(), artifact=form.cleaned_data["artifact"], stages=form.stages()
            )
            context["preview"] = preview
            shares = form.cleaned_data["shares"]
            context["rows"] = [
                {"stage": index + 1, "share": share * 100, "devices": devices}
                for index, (share, devices) in enumerate(zip(shares, preview.per_stage, strict=True))
            ]
        except ApiError as exc:
            context["error"] = error_message(exc)
    else:
        context["error"] = " ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())
    return render(request, "ota/_rollout_preview.html", context)


def _stage_rows(rollout: Rollout) -> list[dict]:
    counts = selectors.rollout_state_counts(rollout)
    rows = []
    for index, stage in enumerate(rollout.stages):
        by_state = counts.get(str(index), {})
        total = sum(by_state.values())
        succeeded = by_state.get(UpdateState.SUCCEEDED, 0)
        failed = sum(by_state.get(s, 0) for s in (UpdateState.FAILED, UpdateState.ROLLED_BACK, UpdateState.TIMED_OUT))
        rows.append(
            {
                "index": index,
                "share": stage["share"] * 100,
                "soak_minutes": stage["soak_seconds"] // 60,
                "gates": stage["gates"],
                "devices": total,
                "by_state": sorted(by_state.items()),
                "succeeded": succeeded,
                "failed": failed,
                "succeeded_pct": 100 * succeeded / total if total else 0,
                "failed_pct": 100 * failed / total if total else 0,
                "current": index == rollout.current_stage,
                "reached": index <= rollout.current_stage,
            }
        )
    return rows


GATE_HISTORY_POINTS = 240  # gate evaluations charted: four hours at the gate tick's once a minute

# Cohort against control, per figure: (label, unit, how to get it from one side's metrics).
COMPARISONS = {
    "error_rate": ("Inference error rate", " %", lambda m: _pct(m.get("errors"), m.get("inferences"))),
    "p95_ms": ("p95 latency", " ms", lambda m: m.get("p95_ms")),
    "offline_rate": ("Offline devices", " %", lambda m: _pct(m.get("offline"), m.get("devices"))),
    "confidence": (
        "Mean confidence",
        "",
        lambda m: round(m["confidence_sum"] / m["confidence_count"], 4) if m.get("confidence_count") else None,
    ),
}


def _pct(part, whole) -> float | None:
    return round(100.0 * part / whole, 3) if whole else None


def _evaluated_at(created_at: dt.datetime, after: dict) -> dt.datetime:
    at = parse_datetime(after.get("at") or "")
    return at or created_at


def gate_charts(rollout: Rollout) -> dict:
    """Chart series from the rollout's gate evaluations (the audit events that store each evaluation's
    metric snapshot, oldest first): per gate its value against its threshold, and per figure the cohort
    against the control cohort. A gate an evaluation did not have (another stage) is a gap."""
    rows = AuditEvent.objects.filter(
        object_type="rollout", object_id=str(rollout.pk), action="rollout.gate_evaluation"
    ).values_list("created_at", "after")[:GATE_HISTORY_POINTS]
    events = [(created_at, after or {}) for created_at, after in rows]
    events.reverse()  # newest GATE_HISTORY_POINTS, drawn oldest first
    # The evaluation's own time (``at``), or when it was recorded for evaluations stored without it.
    t = [int(_evaluated_at(created_at, after).timestamp()) for created_at, after in events]
    gates_by_event = [{gate["name"]: gate for gate in after.get("gates", [])} for _, after in events]
    gates = {}
    for name in sorted({name for by_name in gates_by_event for name in by_name}):
        by_event = [by_name.get(name) for by_name in gates_by_event]
        gates[name] = {
            "t": t,
            "value": [g["value"] if g else None for g in by_event],
            "threshold": [g["threshold"] if g else None for g in by_event],
        }
    compare = {}
    for key, (label, unit, figure) in COMPARISONS.items():
        cohort = [figure(after.get("cohort") or {}) for _, after in events]
        control = [figure(after.get("control") or {}) for _, after in events]
        if any(v is not None for v in cohort + control):
            compare[key] = {"t": t, "cohort": cohort, "control": control, "label": label, "unit": unit}
    return {"points": len(t), "gates": gates, "compare": compare}


@viewer_required
@require_GET
def rollout_detail(request, rollout_id: int):
    """A rollout's stages with per-state device counts, the last gate evaluation (each metric against its
    threshold, cohort against control) and the audit trail. The progress part is what htmx polls."""
    rollout = get_object_or_404(selectors.rollout_list(), pk=rollout_id)
    decision = rollout.last_decision or {}
    context = {
        "rollout": rollout,
        "stages": _stage_rows(rollout),
        "decision": decision,
        "sides": [(side, decision[side]) for side in ("cohort", "control") if side in decision],
        "poll_seconds": ROLLOUT_POLL_SECONDS,
        "live": rollout.state in (RolloutState.RUNNING, RolloutState.PAUSED),
        "charts": gate_charts(rollout),
        "trail": AuditEvent.objects.filter(object_type="rollout", object_id=str(rollout.pk))[:50],
    }
    return render_page(request, "ota/rollout.html", "ota/_rollout_progress.html", context)


ACTIONS = {
    # action: (service, confirmation title, what happens, button); no title: no confirmation step
    "start": (
        rollouts.rollout_start,
        "Start rollout {name}?",
        "The first stage's devices get the release now.",
        "Start",
    ),
    "pause": (rollouts.rollout_pause, None, "", ""),
    "resume": (rollouts.rollout_resume, None, "", ""),
    "advance": (
        rollouts.rollout_advance,
        "Advance {name} to the next stage now?",
        "The next stage's devices get the release now, without waiting for the soak time or the gates.",
        "Advance now",
    ),
    "abort": (
        rollouts.rollout_abort,
        "Abort rollout {name}?",
        "No further device gets the release; devices that installed it keep it.",
        "Abort rollout",
    ),
    "rollback": (
        rollouts.rollout_rollback,
        "Roll back {name}?",
        "Every device that got this release is told to go back to its previous one (a signed rollback).",
        "Roll back",
    ),
}


@operator_required
@require_http_methods(["GET", "POST"])
def rollout_action(request, rollout_id: int, action: str):
    rollout = get_object_or_404(Rollout, pk=rollout_id)
    if action not in ACTIONS:
        return HttpResponseRedirect(reverse("ota:rollout", args=[rollout.pk]))
    service, title, consequence, button = ACTIONS[action]
    detail_url = reverse("ota:rollout", args=[rollout.pk])
    if title and request.POST.get("confirmed") != "yes":
        return render(
            request,
            "fleet/confirm.html",
            {
                "title": title.format(name=rollout.name),
                "message": consequence,
                "action": reverse("ota:rollout-action", args=[rollout.pk, action]),
                "button": button,
                "cancel_url": detail_url,
            },
        )
    if request.method != "POST":
        return HttpResponseRedirect(detail_url)
    kwargs = {"reason": "manual"} if action == "rollback" else {}
    try:
        with transaction.atomic():
            service(actor=actor_of(request), rollout=rollout, **kwargs)
        done = {"start": "Started", "pause": "Paused", "resume": "Resumed", "advance": "Advanced", "abort": "Aborted"}
        messages.success(request, f"{done.get(action, 'Rolled back')} {rollout.name}.")
    except ApiError as exc:
        messages.error(request, error_message(exc))
    return HttpResponseRedirect(detail_url)


# --- pieces of other pages ------------------------------------------------------------------------


def dashboard_updates() -> dict:
    """The dashboard's update cards: live rollouts, and which release the director assigns to how many
    devices (the fleet's models and versions)."""
    live = list(
        selectors.rollout_list().filter(state__in=[RolloutState.RUNNING, RolloutState.PAUSED]).order_by("-pk")[:10]
    )
    assigned = (
        DirectorState.objects.filter(artifact__isnull=False)
        .order_by()
        .values("artifact__name", "artifact__version", "rollback")
        .annotate(devices=Count("*"))
        .order_by("artifact__name", "-devices")
    )
    return {"live_rollouts": live, "assigned_releases": list(assigned[:20])}


def device_updates(device_id: str) -> dict:
    """A device's page: what the director assigns it, its place in a live rollout, and its update history
    with reason codes (newest first, from the (device, seq) index)."""
    director = DirectorState.objects.select_related("artifact", "rollout").filter(device_id=device_id).first()
    membership = RolloutDevice.objects.select_related("rollout").filter(device_id=device_id, active=True).first()
    history = UpdateStatusReport.objects.filter(device_id=device_id).order_by("-seq")[:20]
    return {"director": director, "membership": membership, "history": list(history)}
