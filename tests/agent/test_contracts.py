"""The agent against the shared contracts other parts own: every message it builds passes the platform's
own parser (fleet_agent.schemas), and decide() follows the device's verified, signed policy
(fleet_agent.policy). No server needed: the agent is built on a local state directory."""

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from fleet_agent.agent import Agent, AgentSettings
from fleet_agent.identity import generate_private_key, private_key_pem
from fleet_agent.slots import SlotStore
from fleet_agent.updates import provision
from tests.agent.fakes import make_artifact

DEVICE = "cam-contract"


def local_state(tmp_path, **enrollment) -> Path:
    """An enrolled-looking state directory (self-signed certificate; the agent is never connected)."""
    state = tmp_path / DEVICE
    state.mkdir()
    key = generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=90))
        .sign(key, hashes.SHA256())
    )
    (state / "device.key").write_bytes(private_key_pem(key))
    (state / "device.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (state / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (state / "enrollment.json").write_text(
        json.dumps(
            {
                "device_id": DEVICE,
                "status": "active",
                "mqtt_url": "mqtts://127.0.0.1:9",
                "device_token": "t",
                "server_url": "http://127.0.0.1:9",
            }
            | enrollment
        )
    )
    provision(
        SlotStore(state / "models"), make_artifact(tmp_path / "f", version="1.0.0"), name="detector", version="1.0.0"
    )
    return state


def test_every_message_the_agent_builds_passes_the_platform_parser(tmp_path):
    schemas = pytest.importorskip("fleet_agent.schemas")
    agent = Agent(local_state(tmp_path), settings=AgentSettings())
    agent.record_inference(task="detect", latency_ms=12.5, confidence=0.91, label="person")
    agent.record_inference(
        task="chat", latency_ms=900, route="cloud", cloud_model="gpt-4o-mini", tokens_in=10, tokens_out=5
    )
    agent.record_inference(task="detect", latency_ms=0, confidence=None, error="tensor_shape")
    agent.outbox.seal_batches(force=True)
    agent.outbox.enqueue_heartbeat(agent._heartbeat_body)
    agent._report_ota("failed", "detector/2.0.0/m.tar.gz", "hash_mismatch", "got 12 bytes")
    messages = [(m.leaf, m.payload) for m in agent.outbox.pending(limit=100)]
    messages.append(("status", agent._status_payload("online")))
    assert {leaf for leaf, _ in messages} == {"telemetry", "heartbeat", "ota/status", "status"}
    seqs = []
    for leaf, payload in messages:
        envelope = schemas.parse_envelope(payload, device_id=DEVICE)
        seqs.append(envelope.seq)
        if leaf == "telemetry":
            assert len(schemas.parse_telemetry(envelope.body)) == 3
        elif leaf == "heartbeat":
            assert schemas.parse_heartbeat(envelope.body).models[0]["version"] == "1.0.0"
        elif leaf == "status":
            assert schemas.parse_status(envelope.body) == "online"
    assert len(set(seqs)) == len(seqs)
    agent.outbox.close()


def _signed_policy(key, *, version: int, device_id: str = DEVICE, chat_cloud: bool = True) -> bytes:
    from fleet_agent.policy import sign_policy

    routes = ["local", "cloud"] if chat_cloud else ["local"]
    document = {
        "v": 1,
        "tasks": {"chat": {"routes": routes, "models": ["gpt-4o-mini"], "prefer": "cloud"}},
        "data_classes": {"public": "allow", "health": "never"},
    }
    payload = {
        "v": 1,
        "device_id": device_id,
        "version": version,
        "issued_at": "2030-01-01T00:00:00+00:00",
        "policy": document,
        "prices": {},
    }
    return sign_policy(key, payload)


def test_decide_follows_the_verified_policy_and_keeps_the_last_good_one(tmp_path):
    pytest.importorskip("fleet_agent.policy")
    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    state = local_state(tmp_path, policy_public_key=pem.decode())
    agent = Agent(state, settings=AgentSettings())
    assert agent.decide(task="chat", data_class="public").reason == "no_policy"

    agent._on_message(f"devices/{DEVICE}/policy", _signed_policy(key, version=1))
    allowed = agent.decide(task="chat", data_class="public", connectivity="online")
    assert (allowed.route, allowed.model) == ("cloud", "gpt-4o-mini")
    assert agent.decide(task="chat", data_class="health", connectivity="online").route != "cloud"
    assert agent.decide(task="unknown-task", data_class="public").route == "deny"

    # Refused: signed by another key, for another device, or not newer. The last good policy stays.
    for refused in (
        _signed_policy(Ed25519PrivateKey.generate(), version=5, chat_cloud=False),
        _signed_policy(key, version=6, device_id="cam-other", chat_cloud=False),
        _signed_policy(key, version=1, chat_cloud=False),
        b"not json",
    ):
        agent._on_message(f"devices/{DEVICE}/policy", refused)
        assert agent.decide(task="chat", data_class="public", connectivity="online").route == "cloud"
    assert agent.policy_version == 1

    agent._on_message(f"devices/{DEVICE}/policy", _signed_policy(key, version=2, chat_cloud=False))
    assert agent.decide(task="chat", data_class="public", connectivity="online").route == "local"
    agent.outbox.close()

    # After a restart the stored policy is verified again and active.
    restarted = Agent(state, settings=AgentSettings())
    assert restarted.policy_version == 2
    assert restarted.decide(task="chat", data_class="public", connectivity="online").route == "local"
    restarted.outbox.close()
