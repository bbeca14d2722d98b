"""The agent: one device's MQTT session, telemetry queue, heartbeats, updates and policy, and the Python
API the application on the device uses (``record_inference``, ``decide``).

Threads: the application calls ``record_inference`` from any thread (an SQLite insert, nothing else);
one loop thread drives the MQTT session and ``tick()`` (sealing batches, publishing, heartbeats,
timers); update checks and certificate renewal run on an executor (their own worker in ``fleet-agent
run``, a shared pool in the simulator), so a long download never stalls the session.
"""

import dataclasses
import json
import logging
import os
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fleet_agent import __version__
from fleet_agent.enroll import EnrollError, Paths, certificate, load_enrollment, needs_renewal, renew_certificate
from fleet_agent.fsutil import atomic_write, atomic_write_json
from fleet_agent.outbox import Outbox, envelope, now_ms
from fleet_agent.schemas import parse_record
from fleet_agent.session import Session, SessionSettings
from fleet_agent.slots import SlotStore
from fleet_agent.system import CpuMeter, disk_percent, mem_percent, temperature_c
from fleet_agent.updates import NoUpdateSource, Updater, UpdateSettings, UpdateSource

log = logging.getLogger(__name__)


@dataclass
class AgentSettings:
    """Configuration (``agent.json`` in the state directory; every field optional, see docs/agent.md)."""

    heartbeat_interval_s: float = 60.0
    flush_interval_s: float = 1.0
    disk_cap_mb: float = 100.0
    update_check_interval_s: float = 3600.0
    renew_check_interval_s: float = 3600.0
    health_check_command: str = ""
    health_check_timeout_s: float = 120.0
    probation_s: float = 30.0
    probation_min_records: int = 20
    probation_max_error_rate: float = 0.5
    max_artifact_mb: float = 1024.0
    keepalive_s: int = 60
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    hardware_class: str = ""  # empty: the one given at enrollment
    write_runtime_file: bool = True
    isolate_update_checks: bool = True  # TUF checks in a child process (keeps the agent's memory small)

    @classmethod
    def load(cls, path: Path, **overrides) -> "AgentSettings":
        values = json.loads(path.read_text()) if path.exists() else {}
        values |= overrides
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class Decision:
    """decide()'s answer before a policy is installed; same fields as fleet_agent.policy's Decision."""

    route: str
    reason: str
    model: str | None = None
    redact: bool = False


class Agent:
    def __init__(
        self,
        state_dir: Path,
        *,
        settings: AgentSettings | None = None,
        update_source: UpdateSource | None = None,
        executor: Executor | None = None,
    ):
        self.paths = Paths(Path(state_dir))
        self.enrollment = load_enrollment(self.paths.root)
        if self.enrollment.get("status") != "active" or not self.paths.cert.exists():
            raise EnrollError("pending", "this device is not approved yet; run `fleet-agent enroll` again to wait")
        self.device_id: str = self.enrollment["device_id"]
        self.settings = settings or AgentSettings.load(self.paths.settings)
        self.hardware_class = self.settings.hardware_class or self.enrollment.get("hardware_class", "")
        self.outbox = Outbox(self.paths.queue, cap_bytes=int(self.settings.disk_cap_mb * 1024 * 1024))
        self.store = SlotStore(self.paths.root / "models")
        self.updater = Updater(
            store=self.store,
            source=update_source or self._default_update_source(),
            report=self._report_ota,
            settings=UpdateSettings(
                hardware_class=self.hardware_class,
                max_artifact_bytes=int(self.settings.max_artifact_mb * 1024 * 1024),
                health_check_command=self.settings.health_check_command,
                health_check_timeout_s=self.settings.health_check_timeout_s,
                probation_s=self.settings.probation_s,
            ),
        )
        self.session = Session(
            device_id=self.device_id,
            mqtt_url=self.enrollment["mqtt_url"],
            ca_file=self.paths.ca,
            cert_file=self.paths.cert,
            key_file=self.paths.key,
            will_payload=lambda: self._status_payload("offline"),
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            on_message=self._on_message,
            on_acked=self._on_acked,
            settings=SessionSettings(
                keepalive_s=self.settings.keepalive_s,
                reconnect_min_s=self.settings.reconnect_min_s,
                reconnect_max_s=self.settings.reconnect_max_s,
            ),
        )
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="fleet-agent-update")
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._sent_upto = 0  # highest seq published on this connection
        self._cpu = CpuMeter()
        self._next_heartbeat = 0.0
        self._next_update_check = time.monotonic() + self.settings.update_check_interval_s
        self._next_renew_check = 0.0
        self._next_probation_tick = 0.0
        self._update_requested = threading.Event()
        self._renewing = False
        self._reconnect = False
        self._probation = {"records": 0, "errors": 0, "failed": None}
        self._model = self.store.describe()
        self.updater_in_probation = False
        self._policy_keeper = None  # fleet_agent.policy.PolicyKeeper: holds the last verified policy
        self._policy = None  # its compiled form, for decide()
        self._load_policy()
        self.started = False

    def _default_update_source(self) -> UpdateSource:
        from fleet_agent.ota_source import UptaneSource, uptane_available

        if "update_trust" not in self.enrollment or not uptane_available():
            log.warning("%s: no update trust from enrollment; updates are disabled", self.device_id)
            return NoUpdateSource()
        return UptaneSource(
            enrollment=self.enrollment,
            state_dir=self.paths.root,
            hardware_class=self.hardware_class,
            max_artifact_bytes=int(self.settings.max_artifact_mb * 1024 * 1024),
            installed_counter=self._installed_counter,
            isolated=self.settings.isolate_update_checks,
        )

    def _installed_counter(self) -> int | None:
        active = self.store.active()
        return active.manifest.get("release_counter") if active else None

    # -- application API -----------------------------------------------------------------------------
    def record_inference(
        self,
        *,
        task: str,
        latency_ms: float,
        confidence: float | None = None,
        label: str | None = None,
        route: str = "local",
        cloud_model: str | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
        error: str | None = None,
        model: str | None = None,
        model_version: str | None = None,
        ts: int | None = None,
    ) -> None:
        """Queue one inference record (durably, on disk); it is published in the next batch. ``model`` and
        ``model_version`` default to the active slot's. Raises ValueError for a record the platform
        would refuse."""
        model = model if model is not None else self._model["name"]
        model_version = model_version if model_version is not None else self._model["version"]
        if not model or not model_version:
            raise ValueError("no model is installed in the slots: pass model= and model_version=")
        record = {
            "ts": ts if ts is not None else now_ms(),
            "task": task,
            "model": model,
            "model_version": model_version,
            "latency_ms": latency_ms,
            "confidence": confidence,
            "label": label,
            "route": route,
            "cloud_model": cloud_model,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "error": error,
        }
        # The platform's own record rules (fleet_agent.schemas): a record it would refuse never enters the
        # queue, the application gets the ValueError (SchemaError) naming the field instead.
        parse_record(record, index=0, now=record["ts"] if ts is None else now_ms())
        self.outbox.add_records([record])
        if self._probation["failed"] is None and self.updater_in_probation:
            self._count_probation(error is not None)

    def decide(self, *, task: str, data_class: str, **kwargs) -> Decision:
        """Where may this request run: local, cloud (with a model) or deny, always with a reason.
        Without a verified policy, nothing may leave the device: deny with ``no_policy``. Each decision
        made under a policy is reported on ``llm/usage``."""
        policy = self._policy
        if policy is None:
            return Decision("deny", "no_policy")
        from fleet_agent.policy import decide

        kwargs.setdefault("connectivity", "online" if self.session.connected else "offline")
        decision = decide(policy, task=task, data_class=data_class, **kwargs)
        # What stayed on the device and why, for the platform's ledger (devices/{id}/llm/usage).
        usage = {"task": task, "data_class": data_class, "route": decision.route, "reason": decision.reason}
        if decision.model:
            usage["model"] = decision.model
        usage["tokens_in"] = int(kwargs.get("tokens_in", 0))
        usage["tokens_out"] = int(kwargs.get("tokens_out", 0))
        self.outbox.enqueue("llm/usage", usage)
        return decision

    @property
    def policy_version(self) -> int:
        keeper = self._policy_keeper
        return keeper.version if keeper is not None else 0

    def active_model(self) -> dict:
        """The active slot's name, version and slot letter (None fields when no model is installed)."""
        return dict(self._model)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Crash recovery, before the session: the active model is verified and the outcome of what a
        crash interrupted is queued for the platform."""
        self.updater.recover()
        self._model = self.store.describe()
        self.updater_in_probation = self.updater.in_probation()
        self.started = True
        self.request_update_check()

    def run(self, stop: threading.Event) -> None:
        """``fleet-agent run``: drive the session until ``stop`` is set, then go offline cleanly."""
        if not self.started:
            self.start()
        while not stop.is_set():
            self.session.poll(0.2)
            self.tick()
        self.shutdown()

    def shutdown(self) -> None:
        self.session.close(final_payload=self._status_payload("offline"))
        if self._own_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._write_runtime()
        self.outbox.close()

    def tick(self) -> None:
        now = time.monotonic()
        self.outbox.seal_batches(max_age_s=self.settings.flush_interval_s)
        if self._reconnect and self.session.client is not None:
            self._reconnect = False
            self.session._lost("reconnecting with the renewed certificate")
        if self.session.connected:
            if now >= self._next_heartbeat:
                self._next_heartbeat = now + self.settings.heartbeat_interval_s
                self.outbox.enqueue_heartbeat(self._heartbeat_body)
                self._write_runtime()
            self._publish_pending()
        if now >= self._next_update_check:
            self._next_update_check = now + self.settings.update_check_interval_s
            self.request_update_check()
        if now >= self._next_renew_check and not self._renewing:
            self._next_renew_check = now + self.settings.renew_check_interval_s
            if needs_renewal(certificate(self.paths.root)):
                self._renewing = True
                self._executor.submit(self._renew)
        if self.updater_in_probation and now >= self._next_probation_tick:
            self._next_probation_tick = now + 1.0
            self._executor.submit(self._probation_tick)

    # -- publishing ----------------------------------------------------------------------------------
    def _publish_pending(self) -> None:
        room = self.session.settings.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for message in self.outbox.pending(limit=room, after_seq=self._sent_upto):
            mid = self.session.publish(message.leaf, message.payload, retain=message.retain)
            if mid is None:
                return
            self._inflight[mid] = message.seq
            self._sent_upto = message.seq

    def _on_acked(self, mid: int) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is not None:
            self.outbox.ack(seq)

    def _status_payload(self, state: str) -> bytes:
        return envelope(self.outbox.next_seq(), {"state": state})

    def _on_connected(self) -> None:
        self._inflight.clear()
        self._sent_upto = 0  # re-send everything still in the outbox: the platform dedups on seq
        self._next_heartbeat = 0.0
        self.session.publish("status", self._status_payload("online"), retain=True)
        self._write_runtime()

    def _on_disconnected(self) -> None:
        self._inflight.clear()
        self._sent_upto = 0
        self._write_runtime()

    def _heartbeat_body(self, *, dropped: int, buffer_depth: int) -> dict:
        model = self._model
        return {
            "cpu_pct": self._cpu.percent(),
            "mem_pct": mem_percent(),
            "disk_pct": disk_percent(self.paths.root),
            "temp_c": temperature_c(),
            "models": [{"name": model["name"], "version": model["version"], "slot": model["slot"]}]
            if model["slot"]
            else [],
            "buffer_depth": buffer_depth,
            "dropped": dropped,
            "agent_version": __version__,
        }

    def _write_runtime(self) -> None:
        if not self.settings.write_runtime_file:
            return
        atomic_write_json(
            self.paths.runtime,
            {
                "pid": os.getpid(),
                "connected": self.session.connected,
                "connected_since": self.session.connected_since,
                "last_error": self.session.last_error,
                "updated_at": time.time(),
            },
        )

    # -- platform-to-device --------------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/ota/assign"):
            # The pointer is never trusted: it only makes us ask the director (through the source).
            self.request_update_check()
        elif topic.endswith("/policy"):
            self._on_policy(payload)

    def _load_policy(self) -> None:
        """Set up verification with the policy key from enrollment, and re-verify the stored policy (a
        file on disk is trusted no more than a message)."""
        pem = self.enrollment.get("policy_public_key")
        try:
            from fleet_agent.policy import PolicyKeeper, compile_policy
            from fleet_agent.policy.signature import load_public_key
        except ImportError:
            return
        if not pem:
            log.warning("%s: no policy key from enrollment; decide() denies everything", self.device_id)
            return
        self._compile_policy = compile_policy
        self._policy_keeper = PolicyKeeper(public_key=load_public_key(pem), device_id=self.device_id)
        stored = self.paths.root / "policy.json"
        if stored.exists():
            self._on_policy(stored.read_bytes(), persist=False)

    def _on_policy(self, payload: bytes, *, persist: bool = True) -> None:
        keeper = self._policy_keeper
        if keeper is None:
            log.warning("%s: received a policy but cannot verify it (no policy key); ignoring it", self.device_id)
            return
        if not keeper.offer(payload):
            # The last good policy stays active.
            log.warning("%s: policy refused: %s", self.device_id, keeper.last_error)
            return
        compiled = self._compile_policy(keeper.payload["policy"])
        if persist:  # stored before it is used: what decide() follows survives a restart
            atomic_write(self.paths.root / "policy.json", payload, mode=0o600)
        self._policy = compiled
        log.info("%s: policy version %s active", self.device_id, keeper.version)

    # -- updates -------------------------------------------------------------------------------------
    def request_update_check(self) -> None:
        if self._update_requested.is_set():
            return  # one check is queued already; it will see the newest assignment
        self._update_requested.set()
        self._executor.submit(self._update_job)

    def _update_job(self) -> None:
        self._update_requested.clear()
        try:
            self.updater.check_and_apply()
        except Exception:
            log.exception("%s: update check failed", self.device_id)
        self._after_update()

    def _after_update(self) -> None:
        self._model = self.store.describe()
        self.updater_in_probation = self.updater.in_probation()
        self._probation = {"records": 0, "errors": 0, "failed": None}

    def _count_probation(self, is_error: bool) -> None:
        counts = self._probation
        counts["records"] += 1
        counts["errors"] += int(is_error)
        if (
            counts["records"] >= self.settings.probation_min_records
            and counts["errors"] / counts["records"] >= self.settings.probation_max_error_rate
        ):
            counts["failed"] = "probation_errors"

    def _probation_tick(self) -> None:
        try:
            outcome = self.updater.probation_tick(failed_reason=self._probation["failed"])
        except Exception:
            log.exception("%s: probation check failed", self.device_id)
            return
        if outcome is not None:
            self._after_update()

    def _report_ota(self, state: str, target: str, reason: str = "", detail: str = "") -> None:
        log.info("%s: update %s %s %s", self.device_id, target, state, reason)
        self.outbox.enqueue("ota/status", {"target": target, "state": state, "reason": reason, "detail": detail[:500]})

    # -- certificate ---------------------------------------------------------------------------------
    def _renew(self) -> None:
        try:
            renew_certificate(self.paths.root)
            self._reconnect = True
            log.info("%s: certificate renewed", self.device_id)
        except Exception:
            log.exception("%s: certificate renewal failed; will retry", self.device_id)
        finally:
            self._renewing = False
