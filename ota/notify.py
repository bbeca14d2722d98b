"""Assignment pointers: the retained ``devices/{id}/ota/assign`` message that makes an agent refresh
its director metadata now instead of at its next poll. The pointer is a hint, never trusted: the agent
acts only on what the signed director metadata says (docs/updates.md, "Device update flow")."""

import json
import time

from django.utils import timezone

from fleet import mqtt
from fleet_agent.protocol import PROTOCOL_VERSION, device_topic
from ota.models import DirectorState


def assignment_messages(device_ids: list[str]) -> list[tuple[str, bytes]]:
    """One retained pointer per device, naming the target the director assigns (or null)."""
    targets = {
        device_id: (f"{name}/{version}/{filename}" if name else None)
        for device_id, name, version, filename in DirectorState.objects.filter(device_id__in=device_ids).values_list(
            "device_id", "artifact__name", "artifact__version", "artifact__filename"
        )
    }
    now = timezone.now()
    # seq: milliseconds since the epoch, so a newer pointer always has a larger seq than an older one.
    seq = time.time_ns() // 1_000_000
    messages = []
    for device_id in device_ids:
        body = {
            "v": PROTOCOL_VERSION,
            "seq": seq,
            "ts": now.isoformat(),
            "refresh": "director",
            "target": targets.get(device_id),
        }
        messages.append((device_topic(device_id, "ota/assign"), json.dumps(body, separators=(",", ":")).encode()))
    return messages


def publish_assignments(device_ids: list[str]) -> int:
    messages = assignment_messages(device_ids)
    mqtt.publish_retained(messages)
    return len(messages)
