"""Publishing effective policies: sign each device's effective policy and push it retained on
``devices/{id}/policy`` (QoS 1), in batches.

A device's version only moves when its effective policy changes (the digest of the canonical document),
so republishing a fleet policy that changes nothing for a device sends that device nothing.
"""

import hashlib
import logging
from itertools import islice

from django.db import transaction
from django.utils import timezone

from devices.models import Device
from fleet.services import Actor, audit_record
from fleet_agent.policy.signature import canonical_json, sign_policy
from fleet_agent.protocol import device_topic
from policies import selectors
from policies.models import PublishedPolicy
from policies.signing import active_policy_key
from policies.upstreams import price_table

log = logging.getLogger(__name__)

BATCH_SIZE = 500
POLICY_TOPIC_LEAF = "policy"


def _publish_retained(messages: list[tuple[str, bytes]]) -> None:
    from fleet import mqtt  # the platform's MQTT publisher (fleet/mqtt.py)

    mqtt.publish_retained(messages)


def sign_device_policies(device_ids: list[str]) -> list[tuple[str, bytes]]:
    """Sign and record the effective policy of each device whose policy changed; return the messages."""
    key = active_policy_key()
    prices = price_table()
    messages = []
    versions: dict[str, int] = {}
    with transaction.atomic():
        devices = list(Device.objects.filter(pk__in=device_ids).order_by("pk"))
        effective = selectors.effective_policies(devices)
        # The race: two publish tasks for overlapping devices. Row locks on the published rows (in id
        # order) make the version of each device move by one per real change, never back.
        current = {p.device_id: p for p in PublishedPolicy.objects.select_for_update().filter(device__in=devices)}
        now = timezone.now()
        for device in devices:
            document = effective[device.pk].document
            digest = hashlib.sha256(canonical_json({"policy": document, "prices": prices})).hexdigest()
            row = current.get(device.pk)
            if row is not None and row.digest == digest:
                continue
            version = (row.version if row else 0) + 1
            payload = {
                "v": 1,
                "device_id": device.pk,
                "version": version,
                "issued_at": now.isoformat(),
                "policy": document,
                "prices": prices,
            }
            envelope = sign_policy(key.private_key, payload)
            PublishedPolicy.objects.update_or_create(
                device=device,
                defaults={"version": version, "digest": digest, "envelope": envelope, "published_at": now},
            )
            messages.append((device_topic(device.pk, POLICY_TOPIC_LEAF), envelope))
            versions[device.pk] = version
        if versions:
            # One audit event per batch (not per device): which devices got which version, signed by which key.
            audit_record(
                actor=Actor.system("policy-publisher"),
                action="policy.publish",
                object_type="policy_publication",
                object_id=f"{len(versions)} devices",
                after={"key_id": key.key_id, "versions": versions},
            )
    return messages


def republish_stored(device_ids: list[str]) -> int:
    """Publish the envelopes already signed for these devices, as they are (e.g. one signed on demand
    when a device fetched it over HTTP)."""
    rows = PublishedPolicy.objects.filter(device_id__in=device_ids).values_list("device_id", "envelope")
    messages = [(device_topic(device_id, POLICY_TOPIC_LEAF), bytes(envelope)) for device_id, envelope in rows]
    _publish_retained(messages)
    return len(messages)


def publish_device_policies(device_ids) -> int:
    """Sign and publish the policies of these devices in batches; returns how many were sent."""
    sent = 0
    iterator = iter(device_ids)
    while batch := list(islice(iterator, BATCH_SIZE)):
        messages = sign_device_policies(batch)
        if messages:
            _publish_retained(messages)
            sent += len(messages)
    log.info("published %d device policies", sent)
    return sent
