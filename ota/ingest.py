"""The ingest sink of ``devices/{id}/ota/status`` (contract: telemetry/ingest_contract.py).

Body (besides the envelope ``v``, ``seq``, ``ts``)::

    {"target": "detector/1.4.0/model.onnx", "state": "installing", "reason": "", "detail": ""}

``state`` is one of the per-device update states a device reports (assigned ... rolled_back; not
``timed_out`` nor ``pending``, which only the platform sets); ``reason`` is a machine-readable code,
required with ``failed`` and ``rolled_back``.
"""

from ota.models import UpdateState
from ota.services import StatusReport, update_status_record
from telemetry.ingest_contract import DeviceMessage, Rejection

DEVICE_STATES = {
    UpdateState.ASSIGNED,
    UpdateState.DOWNLOADING,
    UpdateState.DOWNLOADED,
    UpdateState.VERIFYING,
    UpdateState.INSTALLING,
    UpdateState.HEALTH_CHECKING,
    UpdateState.SUCCEEDED,
    UpdateState.FAILED,
    UpdateState.ROLLED_BACK,
}


def _report_of(message: DeviceMessage) -> StatusReport | Rejection:
    body = message.body
    target, state = body.get("target"), body.get("state")
    reason, detail = body.get("reason", ""), body.get("detail", "")
    if target is None or state is None:
        return Rejection(message, "field_missing", "target and state are required")
    if (
        not isinstance(target, str)
        or not isinstance(state, str)
        or not isinstance(reason, str)
        or not isinstance(detail, str)
    ):
        return Rejection(message, "field_type", "target, state, reason and detail are strings")
    if not 0 < len(target) <= 400 or len(reason) > 64:
        return Rejection(message, "field_value", "target is 1-400 characters, reason at most 64")
    if state not in DEVICE_STATES:
        return Rejection(message, "unknown_state", f"state {state!r} is not a device update state")
    if state in (UpdateState.FAILED, UpdateState.ROLLED_BACK) and not reason:
        return Rejection(message, "reason_missing", f"{state} needs a reason code")
    return StatusReport(
        device_id=message.device_id,
        seq=message.seq,
        ts=message.ts,
        target=target,
        state=state,
        reason=reason,
        detail=detail[:500],
    )


def store_ota_status(messages: list[DeviceMessage]) -> list[Rejection]:
    """Validate and store each report once; apply it to the device's update. Runs inside the worker's
    transaction (never commits); database errors propagate so the worker retries the batch."""
    rejections = []
    for message in sorted(messages, key=lambda m: (m.device_id, m.seq)):
        report = _report_of(message)
        if isinstance(report, Rejection):
            rejections.append(report)
            continue
        update_status_record(report=report, received_at=message.received_at)
    return rejections
