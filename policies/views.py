"""Console pages of cloud-LLM policies: the scope documents (edit with inline validation errors), the
effective policy of a device with the scope of each field, and usage and denials by reason."""

import datetime as dt
import json

from django.contrib import messages
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods
from rest_framework.exceptions import ValidationError

from devices.models import Device, DeviceGroup
from fleet.console import actor_of, error_message, operator_required, render_page, viewer_required
from fleet.errors import ApiError
from policies import selectors, services
from policies.models import Policy, Scope

USAGE_WINDOWS = {"1h": dt.timedelta(hours=1), "24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7)}


def _usage(request, *, device: Device | None = None) -> dict:
    window = request.GET.get("usage", "24h")
    window = window if window in USAGE_WINDOWS else "24h"
    summary = selectors.usage_summary(since=timezone.now() - USAGE_WINDOWS[window], device=device)
    return {"usage": summary, "usage_window": window, "usage_windows": list(USAGE_WINDOWS)}


@viewer_required
@require_GET
def policy_list(request):
    policies = Policy.objects.select_related("group", "updated_by").order_by("scope", "id")[:500]
    order = {Scope.FLEET: 0, Scope.GROUP: 1, Scope.DEVICE: 2}
    context = {
        "policies": sorted(policies, key=lambda p: (order[p.scope], p.label)),
        "has_fleet": any(p.scope == Scope.FLEET for p in policies),
        "groups_without": DeviceGroup.objects.filter(llm_policy__isnull=True)[:200],
        **_usage(request),
    }
    return render_page(request, "policies/policies.html", "policies/_usage.html", context)


def _document_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """The service's 400 as (field path, message) pairs, for inline display next to the document."""
    detail = exc.detail if isinstance(exc.detail, dict) else {"document": exc.detail}
    out = []
    for field, messages_ in detail.items():
        for message in messages_ if isinstance(messages_, list) else [messages_]:
            out.append((str(field).removeprefix("document.").removeprefix("document"), str(message)))
    return out


def _parse(text: str) -> tuple[dict | None, list[tuple[str, str]]]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [("", f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).")]
    if not isinstance(document, dict):
        return None, [("", "A policy document is a JSON object.")]
    return document, []


@viewer_required
@require_http_methods(["GET", "POST"])
def policy_edit(request, policy_id: int):
    """One scope's document as JSON; a save goes through policies.services.policy_update, whose
    validation names every invalid field (shown next to the editor, the text kept as typed)."""
    policy = get_object_or_404(Policy.objects.select_related("group", "updated_by"), pk=policy_id)
    errors: list[tuple[str, str]] = []
    text = json.dumps(policy.document, indent=2, sort_keys=True)
    status = 200
    if request.method == "POST":
        return _policy_save(request, policy)
    context = {"policy": policy, "text": text, "errors": errors}
    return render_page(request, "policies/policy_edit.html", None, context, status=status)


@operator_required
def _policy_save(request, policy: Policy):
    text = request.POST.get("document", "")
    document, errors = _parse(text)
    if document is not None:
        try:
            services.policy_update(actor=actor_of(request), policy=policy, document=document)
            messages.success(request, f"Saved the {policy.label} policy; devices get it signed shortly.")
            return HttpResponseRedirect(reverse("policies:edit", args=[policy.pk]))
        except ValidationError as exc:
            errors = _document_errors(exc)
        except ApiError as exc:
            errors = [("", error_message(exc))]
    context = {"policy": policy, "text": text, "errors": errors}
    return render_page(request, "policies/policy_edit.html", None, context, status=400)


@operator_required
@require_http_methods(["GET", "POST"])
def policy_new(request):
    """A policy for a scope that has none yet: the fleet default, a group or a device."""
    scope = request.POST.get("scope") or request.GET.get("scope") or Scope.FLEET
    target = request.POST.get("target") or request.GET.get("target") or ""
    text = request.POST.get("document") or json.dumps({"tasks": {"*": {"routes": ["local"]}}}, indent=2)
    errors: list[tuple[str, str]] = []
    if request.method == "POST":
        document, errors = _parse(text)
        if document is not None:
            try:
                group = DeviceGroup.objects.filter(name=target).first() if scope == Scope.GROUP else None
                device = Device.objects.filter(pk=target).first() if scope == Scope.DEVICE else None
                policy = services.policy_create(
                    actor=actor_of(request), scope=scope, document=document, group=group, device=device
                )
                messages.success(request, f"Created the {policy.label} policy.")
                return HttpResponseRedirect(reverse("policies:edit", args=[policy.pk]))
            except ValidationError as exc:
                errors = _document_errors(exc)
            except ApiError as exc:
                errors = [("", error_message(exc))]
    context = {"scope": scope, "target": target, "text": text, "errors": errors, "scopes": Scope.choices}
    return render_page(request, "policies/policy_new.html", None, context, status=400 if errors else 200)


def device_policy(request, device: Device) -> dict:
    """A device's page: its effective policy, which scope set each field, its budgets and usage."""
    effective = selectors.effective_policy(device)
    fields = list(effective.sources.items())  # in document order
    return {
        "policy_fields": [(path, _value_at(effective.document, path), scope) for path, scope in fields],
        "policy_scopes": [p.label for p in selectors.scope_policies(device)],
        **_usage(request, device=device),
    }


def _value_at(document: dict, path: str):
    node = document
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return json.dumps(node) if isinstance(node, dict | list) else node
