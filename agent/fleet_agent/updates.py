"""Verified A/B updates: the agent's update state machine, crash recovery and status reports.

Where updates come from is behind a small interface, ``UpdateSource``: ``check()`` returns the update the
director assigns (already verified against the image repository: both agree on length and sha256) or
None, and ``download(update, dest)`` writes the artifact to ``dest`` (resuming a partial file when it
can). ``fleet_agent.uptane`` implements it over TUF; tests use a local double.

Whatever the source says, this module checks again what it can check itself (hardware class, size cap,
release counter, length, sha256) before anything is installed, and reports every state on
``devices/{id}/ota/status``: assigned, downloading, downloaded, verifying, installing, health_checking,
succeeded, failed, rolled_back (``failed`` and ``rolled_back`` always with a reason code).

Each phase is recorded in ``models/journal.json`` (written atomically) *before* it starts, so the next
start knows what was interrupted (``recover()``): before the switch, the active slot was never touched;
from the switch on, the new slot is not trusted until it passed its health check and probation, so an
interrupted one is reverted to the previous slot.
"""

import hashlib
import json
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from fleet_agent.fsutil import atomic_write_json, fsync_dir, read_json
from fleet_agent.slots import SlotStore, file_digest

log = logging.getLogger(__name__)

ASSIGNED = "assigned"
DOWNLOADING = "downloading"
DOWNLOADED = "downloaded"
VERIFYING = "verifying"
INSTALLING = "installing"
SWITCHING = "switching"  # journal phase only; reported as health_checking
HEALTH_CHECKING = "health_checking"
PROBATION = "probation"  # journal phase only: health check passed, not yet committed
SUCCEEDED = "succeeded"
FAILED = "failed"
ROLLED_BACK = "rolled_back"

# Interrupted before these phases, the active slot is untouched; from SWITCHING on, revert.
_BEFORE_SWITCH = (ASSIGNED, DOWNLOADING, DOWNLOADED, VERIFYING, INSTALLING)
MAX_INTERRUPTED_ATTEMPTS = 3
# A check that failed for these reasons (repository unreachable) is retried at the next trigger, unreported.
TRANSIENT_REASONS = frozenset({"download_failed"})
DEFAULT_MAX_ARTIFACT_BYTES = 1024**3


@dataclass(frozen=True)
class VerifiedUpdate:
    """What the director assigns this device, as verified by the update source."""

    target: str
    length: int
    sha256: str
    name: str = ""
    version: str = ""
    release_counter: int = 0
    hardware: tuple[str, ...] = ()
    runtime: str = ""
    rollback: bool = False  # the director explicitly signed a downgrade


class UpdateRejected(Exception):
    """The source refused an update (expired metadata, unknown key, director/image disagreement, ...)."""

    def __init__(self, reason: str, detail: str = "", target: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.target = target


class UpdateSource(Protocol):
    def check(self) -> VerifiedUpdate | None: ...

    def download(self, update: VerifiedUpdate, dest: Path) -> None: ...


class NoUpdateSource:
    """Until an update source is configured: never an update."""

    def check(self) -> VerifiedUpdate | None:
        return None

    def download(self, update: VerifiedUpdate, dest: Path) -> None:
        raise UpdateRejected("no_update_source", "no update source is configured", update.target)


def fingerprint(update: VerifiedUpdate) -> str:
    """Identifies one assignment: a rejected one is not retried, but the same artifact assigned anew
    (e.g. a director-signed rollback) is a different assignment."""
    return hashlib.sha256(json.dumps(asdict(update), sort_keys=True).encode()).hexdigest()


Reporter = Callable[..., None]  # report(state, target, reason="", detail="")


@dataclass
class UpdateSettings:
    hardware_class: str = ""
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    health_check_command: str = ""  # empty: the default check (load + the artifact's self-test)
    health_check_timeout_s: float = 120.0
    probation_s: float = 0.0


@dataclass
class Outcome:
    state: str
    reason: str = ""
    detail: str = ""
    extra: dict = field(default_factory=dict)


def default_health_check(slot_path: Path, manifest: dict, timeout_s: float) -> tuple[bool, str, str]:
    """Load the model (read it whole and compare with the verified hash), then run the artifact's own
    self-test (``content/selftest``, an executable in the archive) when it has one."""
    length, sha256 = file_digest(slot_path / "artifact")
    if (length, sha256) != (manifest["length"], manifest["sha256"]):
        return False, "model_load_failed", "the installed artifact no longer matches its hash"
    selftest = slot_path / "content" / "selftest"
    if selftest.is_file():
        return _run_check(
            [str(selftest)], cwd=slot_path / "content", slot_path=slot_path, manifest=manifest, timeout_s=timeout_s
        )
    return True, "", ""


def _run_check(argv: list[str], *, cwd: Path, slot_path: Path, manifest: dict, timeout_s: float):
    env = os.environ | {
        "FLEET_MODEL_DIR": str(slot_path),
        "FLEET_MODEL_PATH": str(slot_path / ("content" if (slot_path / "content").is_dir() else "artifact")),
        "FLEET_MODEL_NAME": manifest.get("name", ""),
        "FLEET_MODEL_VERSION": manifest.get("version", ""),
    }
    try:
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
    except OSError as exc:
        return False, "health_check_failed", f"cannot run {argv[0]}: {exc}"
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return False, "health_check_timeout", f"no answer within {timeout_s:g}s"
    if process.returncode != 0:
        tail = output.decode(errors="replace")[-300:]
        return False, "health_check_failed", f"exit {process.returncode}: {tail}"
    return True, "", ""


class Updater:
    """Runs one update at a time through the phases above; thread-safe (one lock)."""

    def __init__(self, *, store: SlotStore, source: UpdateSource, report: Reporter, settings: UpdateSettings):
        self.store = store
        self.source = source
        self.report = report
        self.settings = settings
        self._lock = threading.RLock()
        self.journal_path = store.root / "journal.json"
        self.history_path = store.root / "history.json"

    # -- journal -------------------------------------------------------------------------------------
    def journal(self) -> dict | None:
        return read_json(self.journal_path)

    def _phase(self, journal: dict, phase: str, **fields) -> dict:
        journal = journal | fields | {"phase": phase, "at": time.time()}
        atomic_write_json(self.journal_path, journal)
        return journal

    def _clear(self) -> None:
        try:
            self.journal_path.unlink()
            fsync_dir(self.store.root)
        except FileNotFoundError:
            pass

    def _history(self) -> dict:
        return read_json(self.history_path, {"rejected": {}, "attempts": {}})

    def _remember(self, *, rejected: str | None = None, attempt: str | None = None, clear: str | None = None) -> dict:
        history = self._history()
        if rejected:
            history["rejected"][rejected] = True
        if attempt:
            history["attempts"][attempt] = history["attempts"].get(attempt, 0) + 1
        if clear:
            history["attempts"].pop(clear, None)
        atomic_write_json(self.history_path, history)
        return history

    def _finish(self, journal: dict, outcome: Outcome) -> Outcome:
        # The outcome is journalled before it is reported: a crash in between reports it at the next start.
        journal = self._phase(journal, "done", outcome=asdict(outcome))
        self.report(outcome.state, journal["update"]["target"], outcome.reason, outcome.detail)
        self._clear()
        return outcome

    # -- the state machine ---------------------------------------------------------------------------
    def check_and_apply(self) -> Outcome | None:
        """Ask the source for the assigned update and apply it; None when there is nothing to do."""
        with self._lock:
            if self.journal() is not None:
                return None  # an update is in probation (or recovery has not run yet)
            try:
                update = self.source.check()
            except UpdateRejected as exc:
                if exc.reason in TRANSIENT_REASONS:
                    log.warning("update check failed (will retry): %s", exc)
                    return Outcome(FAILED, exc.reason, exc.detail)
                history = self._history()
                key = f"{exc.target}:{exc.reason}"
                if key not in history["rejected"]:  # the retained assignment comes back on every reconnect
                    self._remember(rejected=key)
                    self.report(FAILED, exc.target or "unknown", exc.reason, exc.detail)
                return Outcome(FAILED, exc.reason, exc.detail)
            if update is None:
                return None
            return self.apply(update)

    def apply(self, update: VerifiedUpdate) -> Outcome | None:
        with self._lock:
            active = self.store.active()
            if active and active.manifest.get("sha256") == update.sha256:
                return None  # already running it
            if fingerprint(update) in self._history()["rejected"]:
                return None  # reported already; a new assignment is needed to try again
            journal = self._phase({"update": asdict(update), "fingerprint": fingerprint(update)}, ASSIGNED)
            self.report(ASSIGNED, update.target)
            problem = self._precheck(update, active.manifest if active else None)
            if problem:
                self._remember(rejected=fingerprint(update))
                return self._finish(journal, Outcome(FAILED, *problem))
            return self._download_and_install(journal, update)

    def _precheck(self, update: VerifiedUpdate, active: dict | None) -> tuple[str, str] | None:
        hw = self.settings.hardware_class
        if update.hardware and hw not in update.hardware:
            return "wrong_hardware", f"built for {', '.join(update.hardware)}; this device is {hw or 'unset'}"
        if update.length > self.settings.max_artifact_bytes:
            return "too_large", f"{update.length} bytes > cap {self.settings.max_artifact_bytes}"
        if active and update.release_counter < active.get("release_counter", 0) and not update.rollback:
            return (
                "release_counter_lower",
                f"release counter {update.release_counter} < installed {active.get('release_counter', 0)}",
            )
        return None

    def _download_and_install(self, journal: dict, update: VerifiedUpdate) -> Outcome | None:
        part = self.store.download_dir / f"{update.sha256}.part"
        journal = self._phase(journal, DOWNLOADING)
        self.report(DOWNLOADING, update.target)
        try:
            self.source.download(update, part)
        except UpdateRejected as exc:
            part.unlink(missing_ok=True)
            self._remember(rejected=fingerprint(update))
            return self._finish(journal, Outcome(FAILED, exc.reason, exc.detail))
        except OSError as exc:
            # Transient (network, disk): keep the partial file, try again at the next check.
            self._clear()
            self.report(FAILED, update.target, "download_failed", str(exc)[:300])
            return Outcome(FAILED, "download_failed", str(exc))
        journal = self._phase(journal, DOWNLOADED)
        self.report(DOWNLOADED, update.target)

        journal = self._phase(journal, VERIFYING)
        self.report(VERIFYING, update.target)
        length, sha256 = file_digest(part, limit=update.length) if part.exists() else (0, "")
        if length != update.length or sha256 != update.sha256:
            part.unlink(missing_ok=True)
            self._remember(rejected=fingerprint(update))
            reason = "length_mismatch" if length != update.length else "hash_mismatch"
            return self._finish(journal, Outcome(FAILED, reason, f"got {length} bytes, sha256 {sha256[:16]}"))

        slot = self.store.inactive_slot()
        previous = self.store.active_slot()
        journal = self._phase(journal, INSTALLING, slot=slot, previous=previous)
        self.report(INSTALLING, update.target)
        manifest = asdict(update) | {"installed_at": time.time()}
        manifest["hardware"] = list(update.hardware)
        try:
            self.store.install(slot, part, manifest)
        except (OSError, ValueError) as exc:
            self._remember(rejected=fingerprint(update))
            return self._finish(journal, Outcome(FAILED, "install_failed", str(exc)[:300]))

        journal = self._phase(journal, SWITCHING)
        self.store.switch(slot)
        journal = self._phase(journal, HEALTH_CHECKING)
        self.report(HEALTH_CHECKING, update.target)
        ok, reason, detail = self._health_check(slot, manifest)
        if not ok:
            return self._revert(journal, reason, detail)
        if self.settings.probation_s > 0:
            self._phase(journal, PROBATION, deadline=time.time() + self.settings.probation_s)
            return None
        return self._commit(journal)

    def _health_check(self, slot: str, manifest: dict) -> tuple[bool, str, str]:
        path = self.store.slot_path(slot)
        timeout = self.settings.health_check_timeout_s
        if self.settings.health_check_command:
            return _run_check(
                shlex.split(self.settings.health_check_command),
                cwd=path,
                slot_path=path,
                manifest=manifest,
                timeout_s=timeout,
            )
        return default_health_check(path, manifest, timeout)

    def _commit(self, journal: dict) -> Outcome:
        self._remember(clear=journal["update"]["sha256"])
        return self._finish(journal, Outcome(SUCCEEDED))

    def _revert(self, journal: dict, reason: str, detail: str = "") -> Outcome:
        previous = journal.get("previous")
        if previous and self.store.verify(previous):
            self.store.switch(previous)
        else:  # the first model ever failed: better no model than an unhealthy one
            self.store.current_link.unlink(missing_ok=True)
            fsync_dir(self.store.root)
        self._remember(rejected=journal.get("fingerprint", ""))
        return self._finish(journal, Outcome(ROLLED_BACK, reason, detail))

    # -- probation -----------------------------------------------------------------------------------
    def in_probation(self) -> bool:
        journal = self.journal()
        return bool(journal and journal.get("phase") == PROBATION)

    def probation_tick(self, *, failed_reason: str | None = None) -> Outcome | None:
        """Called by the agent's loop: revert when the application reported the new model unhealthy,
        commit once the probation period is over."""
        with self._lock:
            journal = self.journal()
            if not journal or journal.get("phase") != PROBATION:
                return None
            if failed_reason:
                return self._revert(journal, failed_reason)
            if time.time() >= journal["deadline"]:
                return self._commit(journal)
            return None

    # -- after a restart -----------------------------------------------------------------------------
    def recover(self) -> Outcome | None:
        """Run once at start, before anything else uses the model: finish or undo what a crash
        interrupted, report it, and make sure the active slot is verified."""
        with self._lock:
            outcome = None
            journal = self.journal()
            if journal is not None:
                outcome = self._recover_journal(journal)
            self._ensure_verified_active()
            return outcome

    def _recover_journal(self, journal: dict) -> Outcome | None:
        phase = journal.get("phase")
        update = journal.get("update", {})
        target, sha = update.get("target", "unknown"), update.get("sha256", "")
        if phase == "done":
            outcome = Outcome(**journal["outcome"])
            self.report(outcome.state, target, outcome.reason, outcome.detail)
            self._clear()
            return outcome
        if phase in _BEFORE_SWITCH:
            # The active slot was never touched. Report, and let the next check try again (resuming the
            # download) unless this update keeps getting interrupted.
            history = self._remember(attempt=sha)
            if history["attempts"].get(sha, 0) >= MAX_INTERRUPTED_ATTEMPTS:
                self._remember(rejected=journal.get("fingerprint", ""))
            self._clear()
            self.report(FAILED, target, f"interrupted_{phase}", "the agent stopped during this phase")
            return Outcome(FAILED, f"interrupted_{phase}")
        # SWITCHING, HEALTH_CHECKING, PROBATION: the new model never proved itself: back to the old one.
        reason = {SWITCHING: "interrupted_switch", HEALTH_CHECKING: "interrupted_health_check"}.get(
            phase, "interrupted_probation"
        )
        previous = journal.get("previous")
        if previous and self.store.verify(previous):
            return self._revert(journal, reason, "the agent stopped before the new model was committed")
        # No earlier model to go back to (first install): keep the new one if it verifies.
        self._clear()
        self.report(FAILED, target, reason, "no previous model to revert to")
        return Outcome(FAILED, reason)

    def _ensure_verified_active(self) -> None:
        active = self.store.active_slot()
        if active is None or self.store.verify(active):
            return
        other = "b" if active == "a" else "a"
        manifest = self.store.manifest(active) or {}
        if self.store.verify(other):
            self.store.switch(other)
            log.error("active slot %s failed verification; switched to slot %s", active, other)
            self.report(ROLLED_BACK, manifest.get("target", "unknown"), "slot_corrupt", f"slot {active} failed")
        else:
            log.error("no verified model: slot %s failed verification and slot %s is empty", active, other)
            self.store.current_link.unlink(missing_ok=True)
            fsync_dir(self.store.root)
            self.report(FAILED, manifest.get("target", "unknown"), "slot_corrupt", "no verified model left")


def provision(
    store: SlotStore, artifact: Path, *, name: str, version: str, release_counter: int = 0, target: str = ""
) -> None:
    """Factory install: put a local artifact into the inactive slot and make it active (no health check,
    no report: this is how a device leaves the factory, before it ever talks to the platform)."""
    length, sha256 = file_digest(artifact)
    part = store.download_dir / f"{sha256}.provision"
    with open(artifact, "rb") as src, open(part, "wb") as dst:
        while chunk := src.read(1024 * 1024):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    manifest = {
        "target": target or f"{name}/{version}/{artifact.name}",
        "length": length,
        "sha256": sha256,
        "name": name,
        "version": version,
        "release_counter": release_counter,
        "hardware": [],
        "runtime": "",
        "rollback": False,
        "installed_at": time.time(),
    }
    slot = store.inactive_slot()
    store.install(slot, part, manifest)
    store.switch(slot)
