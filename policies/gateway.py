"""The OpenAI-compatible gateway: ``POST /v1/chat/completions`` for devices.

A device authenticates with its device token (``Authorization: Device <token>``, or ``Bearer <token>`` so
stock OpenAI clients work) and names the task and data class in headers (``X-Fleet-Task``,
``X-Fleet-Data-Class``; ``X-Fleet-Redacted: 1`` when it redacted the data). The gateway re-runs decide()
on the device's effective policy (no local model here: it only says whether the cloud is permitted),
reserves the estimated tokens and cost in every budget window, forwards to the first upstream serving
the model (the next one if it fails), and settles the real usage from the upstream's answer. Streams
(SSE) pass through chunk by chunk and settle from the final usage chunk. Refusals are OpenAI-style
error bodies naming the reason code. The device never sees a provider key; the provider never sees the
device token.
"""

import json
import logging

import urllib3
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from devices.models import DeviceStatus
from devices.services import device_token_hash
from fleet_agent.policy import decide
from fleet_agent.policy.document import NAME_RE
from policies import selectors, services
from policies.upstreams import cost_micros, upstreams_for

log = logging.getLogger(__name__)

# 429 for spending limits (clients back off and retry later); 403 for everything the policy refuses.
STATUS_OF = {"budget_exhausted": 429, "rate_limited": 429}
ERROR_TYPE = {401: "authentication_error", 403: "permission_denied", 429: "rate_limit_exceeded"}  # else invalid_request
MAX_BODY = 2 * 1024 * 1024
MAX_CHOICES = 8
MAX_OUTPUT_TOKENS = 1_000_000

_pool: urllib3.PoolManager | None = None


def http_pool() -> urllib3.PoolManager:
    """One pool per process: keep-alive connections to the upstreams, shared by the worker's threads.
    urllib3 rather than httpx: the same pooling and streaming for about half the CPU per request, which
    is most of what the gateway spends besides its three database statements. No retries: a failed
    upstream is handled by falling back to the next one."""
    global _pool
    if _pool is None:
        _pool = urllib3.PoolManager(num_pools=16, maxsize=50, block=False, retries=False)
    return _pool


def error(status: int, code: str, message: str, *, error_type: str | None = None) -> JsonResponse:
    body = {
        "error": {
            "message": message,
            "type": error_type or ERROR_TYPE.get(status, "invalid_request_error"),
            "code": code,
            "param": None,
        }
    }
    response = JsonResponse(body, status=status)
    if status == 401:
        response["WWW-Authenticate"] = "Device"
    return response


def _authenticate(request) -> selectors.GatewayCaller | JsonResponse:
    parts = request.META.get("HTTP_AUTHORIZATION", "").split()
    if len(parts) != 2 or parts[0].lower() not in ("device", "bearer"):
        return error(401, "device_token_missing", "Send the device token: Authorization: Device <token>.")
    token_hash = device_token_hash(parts[1])
    caller = selectors.gateway_caller(token_hash) if token_hash else None
    if caller is None or caller.device.status == DeviceStatus.REVOKED:
        return error(401, "device_token_invalid", "Unknown device token or revoked device.")
    if caller.device.status != DeviceStatus.ACTIVE:
        return error(403, "device_not_active", "The device is not active (pending approval?).")
    return caller


# Request fields besides the messages that the upstream also turns into prompt tokens.
PROMPT_FIELDS = ("tools", "functions", "tool_choice", "response_format")


def estimate_input_tokens(body: dict) -> int:
    """An upper bound of the prompt's tokens: the UTF-8 bytes of every message as JSON (content, tool
    calls, names, and the keys around them, which covers the per-message special tokens) and of the
    tool definitions. A byte-level BPE token covers at least one byte, so a reservation is never smaller
    than what the upstream charges."""
    total = 0
    for message in body["messages"]:
        total += len(json.dumps(message, ensure_ascii=False).encode("utf-8"))
    for field in PROMPT_FIELDS:
        if field in body:
            total += len(json.dumps(body[field], ensure_ascii=False).encode("utf-8"))
    return total


def _usage_of(body: dict) -> tuple[int, int] | None:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(tokens_in, int) or not isinstance(tokens_out, int):
        return None
    return max(tokens_in, 0), max(tokens_out, 0)


@csrf_exempt
def chat_completions(request):
    at = timezone.now()
    if request.method != "POST":
        response = error(405, "method_not_allowed", "Use POST.", error_type="invalid_request_error")
        response["Allow"] = "POST"
        return response
    caller = _authenticate(request)
    if isinstance(caller, HttpResponse):
        return caller
    device = caller.device
    task = request.headers.get("X-Fleet-Task", "").strip()
    data_class = request.headers.get("X-Fleet-Data-Class", "").strip()
    if not task or not data_class:
        return error(400, "task_or_data_class_missing", "Send the X-Fleet-Task and X-Fleet-Data-Class headers.")
    if not NAME_RE.match(task) or not NAME_RE.match(data_class) or data_class == "*":
        return error(400, "invalid_task_or_data_class", "Task types and data classes are lowercase names.")
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY:
        return error(400, "request_too_large", f"The request body is larger than {MAX_BODY} bytes.")
    try:
        raw = request.body
    except RequestDataTooBig:
        return error(400, "request_too_large", f"The request body is larger than {MAX_BODY} bytes.")
    if len(raw) > MAX_BODY:
        return error(400, "request_too_large", f"The request body is larger than {MAX_BODY} bytes.")
    try:
        body = json.loads(raw)
    except ValueError:
        return error(400, "invalid_json", "The request body is not JSON.")
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return error(400, "messages_missing", "messages must be a non-empty list.")
    # The OpenAI shape: every message an object with a string role. Anything else is refused here
    # rather than forwarded (an upstream answers it with an error the device would be charged for).
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return error(400, "invalid_messages", "every message must be an object with a string role.")
    requested_model = body.get("model")
    if requested_model in ("", "auto"):
        requested_model = None
    if requested_model is not None and not isinstance(requested_model, str):
        return error(400, "invalid_model", "model must be a string.")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_OUTPUT_TOKENS
    ):
        return error(400, "invalid_max_tokens", f"max_tokens must be an integer from 1 to {MAX_OUTPUT_TOKENS}.")
    choices = body.get("n", 1)
    if isinstance(choices, bool) or not isinstance(choices, int) or not 1 <= choices <= MAX_CHOICES:
        return error(400, "invalid_n", f"n must be an integer from 1 to {MAX_CHOICES}.")
    stream = body.get("stream") is True

    policy, document = selectors.compiled_policy(caller)
    rule = document["tasks"].get(task) or document["tasks"].get("*") or {}
    tokens_out = max_tokens or rule.get("max_output_tokens") or settings.LLM_DEFAULT_MAX_OUTPUT_TOKENS
    tokens_in = estimate_input_tokens(body)
    decision = decide(
        policy,
        task=task,
        data_class=data_class,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        local_available=False,
        model=requested_model,
    )

    def refuse(reason: str, message: str, model: str = "") -> JsonResponse:
        services.usage_record_decision(
            device=device, task=task, data_class=data_class, route="deny", reason=reason, model=model, at=at
        )
        return error(STATUS_OF.get(reason, 403), reason, message)

    if decision.route != "cloud":
        return refuse(
            decision.reason,
            f"The device's policy does not allow this request ({decision.reason}).",
            requested_model or "",
        )
    if decision.redact and request.headers.get("X-Fleet-Redacted") != "1":
        return refuse(
            "redaction_required", "This data class must be redacted first (send X-Fleet-Redacted: 1).", decision.model
        )
    routes = upstreams_for(decision.model)
    if not routes:
        return refuse("model_not_configured", f"No upstream serves the model {decision.model!r}.", decision.model)
    # n choices each generate up to max_tokens: reserve for all of them.
    estimate = max(cost_micros(route, tokens_in, tokens_out * choices) for _, route in routes)
    try:
        reservation = services.budget_reserve(
            device=device,
            document=document,
            task=task,
            data_class=data_class,
            model=decision.model,
            tokens=tokens_in + tokens_out * choices,
            cost_micros=estimate,
            at=at,
        )
    except services.BudgetRefused as refused:
        return refuse(
            refused.reason,
            f"The device's {refused.window} budget does not cover this request ({refused.reason}).",
            decision.model,
        )

    forward = dict(body)
    forward["max_tokens"] = tokens_out
    forward.pop("max_completion_tokens", None)
    if stream:
        options = body.get("stream_options")
        forward["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return _forward(request, reservation, decision.reason, routes, forward, stream)


def _forward(request, reservation, reason, routes, forward, stream):
    pool = http_pool()
    last_problem = "no upstream answered"
    for upstream, route in routes:
        payload = json.dumps(dict(forward, model=route.upstream_model), ensure_ascii=False).encode("utf-8")
        try:
            response = pool.urlopen(
                "POST",
                f"{upstream.base_url}/chat/completions",
                body=payload,
                headers={"Authorization": f"Bearer {upstream.api_key}", "Content-Type": "application/json"},
                timeout=urllib3.Timeout(connect=upstream.timeout_s, read=upstream.timeout_s),
                redirect=False,
                preload_content=not stream,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            last_problem = f"{upstream.name}: {type(exc).__name__}"
            log.warning("upstream %s failed: %s", upstream.name, exc)
            continue
        if response.status >= 500 or response.status == 429:
            last_problem = f"{upstream.name}: HTTP {response.status}"
            response.close()
            continue
        if response.status >= 400:
            # The upstream refused the request itself (bad parameters): pass its answer on, charge nothing.
            content = response.data
            response.close()
            services.budget_release(reservation=reservation, reason="upstream_rejected")
            return HttpResponse(content, status=response.status, content_type="application/json")
        if stream:
            return _stream(reservation, reason, upstream, route, response)
        content = response.data
        try:
            usage = _usage_of(json.loads(content))
        except ValueError:
            usage = None
        _settle(reservation, reason, upstream.name, route, usage)
        return HttpResponse(content, status=response.status, content_type="application/json")
    services.budget_release(reservation=reservation, reason="upstream_unavailable")
    return error(
        502, "upstream_unavailable", f"No upstream could serve the request ({last_problem}).", error_type="api_error"
    )


def _settle(reservation, reason, upstream_name, route, usage) -> None:
    if usage is None:
        # No usage reported: charge the whole reservation (an upper bound) rather than nothing.
        tokens_in, tokens_out = reservation.tokens, 0
        cost = reservation.cost_micros
    else:
        tokens_in, tokens_out = usage
        cost = cost_micros(route, tokens_in, tokens_out)
    services.budget_settle(
        reservation=reservation,
        reason=reason,
        upstream=upstream_name,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        cost_micros=cost,
    )


def _stream(reservation, reason, upstream, route, response) -> StreamingHttpResponse:
    def chunks():
        usage = None
        pending = b""
        complete = False
        try:
            # read1: whatever has arrived (one chunk of a chunked stream), so events pass through as they come.
            while chunk := response.read1(65536):
                yield chunk
                # Watch the SSE lines go by for the final usage chunk (include_usage).
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(b"data:") and b'"usage"' in line:
                        try:
                            found = _usage_of(json.loads(line[5:].strip()))
                        except ValueError:
                            found = None
                        usage = found or usage
            complete = True
        finally:
            # Back to the pool only when read to the end: a stream the client left half-way leaves the
            # connection mid-response, unusable for the next request.
            if complete:
                response.release_conn()
            else:
                response.close()
            _settle(reservation, reason, upstream.name, route, usage)

    streaming = StreamingHttpResponse(chunks(), content_type="text/event-stream")
    streaming["Cache-Control"] = "no-cache"
    streaming["X-Accel-Buffering"] = "no"
    return streaming
