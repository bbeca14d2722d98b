"""The agent's update source over TUF: an adapter from ``fleet_agent.uptane`` (director + image
repository verification and download) to the ``UpdateSource`` interface the updater uses.

The trusted roots and repository URLs come from the enrollment response (``update_trust``), never from
a cache; the TUF metadata copies live in ``STATE/tuf/``.

By default each check and download runs in a short-lived child process (``python -m
fleet_agent.ota_source``): python-tuf and its dependencies add about 15 MB of memory that a long-running
agent would otherwise carry for checks it makes a few times a day, and a fault in parsing hostile
metadata cannot take the agent down. The simulator runs them in-process (``isolated=False``), where one
process serves many devices.
"""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fleet_agent.updates import UpdateRejected, VerifiedUpdate

CHILD_TIMEOUT_S = 3600


class UptaneSource:
    def __init__(
        self,
        *,
        enrollment: dict,
        state_dir: Path,
        hardware_class: str,
        max_artifact_bytes: int,
        installed_counter: Callable[[], int | None],
        isolated: bool = True,
    ):
        self.enrollment = enrollment
        self.state_dir = Path(state_dir)
        self.hardware_class = hardware_class
        self.max_artifact_bytes = max_artifact_bytes
        self.installed_counter = installed_counter
        self.isolated = isolated
        self._client = None
        self._assignment = None

    # -- in this process -----------------------------------------------------------------------------
    def _uptane_client(self):
        from fleet_agent import uptane

        if self._client is None:
            trust = self.enrollment["update_trust"]
            self._client = uptane.UptaneClient(
                uptane.TrustConfig(
                    device_id=self.enrollment["device_id"],
                    hardware_class=self.hardware_class,
                    device_token=self.enrollment["device_token"],
                    image_root=trust["image_root"].encode(),
                    director_root=trust["director_root"].encode(),
                    image_url=trust["image_url"],
                    director_url=trust["director_url"],
                    max_artifact_bytes=self.max_artifact_bytes,
                ),
                self.state_dir / "tuf",
            )
        return self._client

    def _check_here(self, installed_counter: int | None) -> VerifiedUpdate | None:
        from fleet_agent import uptane

        try:
            assignment = self._uptane_client().check(installed_counter=installed_counter)
        except uptane.UpdateRejected as exc:
            raise UpdateRejected(exc.code, exc.message, "unknown") from exc
        self._assignment = assignment
        if assignment is None:
            return None
        return VerifiedUpdate(
            target=assignment.target_path,
            length=assignment.length,
            sha256=assignment.sha256,
            name=assignment.name,
            version=assignment.version,
            release_counter=assignment.release_counter,
            runtime=assignment.runtime,
            rollback=assignment.rollback,
        )

    def _download_here(self, update: VerifiedUpdate, dest: Path, installed_counter: int | None) -> None:
        from fleet_agent import uptane

        assignment = self._assignment
        if assignment is None or assignment.sha256 != update.sha256:
            current = self._check_here(installed_counter)
            if current is None or current.sha256 != update.sha256:
                raise UpdateRejected("assignment_changed", "the director no longer assigns this target", update.target)
            assignment = self._assignment
        try:
            verified = self._uptane_client().download(assignment, dest.parent / "tuf-download")
        except uptane.UpdateRejected as exc:
            raise UpdateRejected(exc.code, exc.message, update.target) from exc
        os.replace(verified.path, dest)

    # -- UpdateSource --------------------------------------------------------------------------------
    def check(self) -> VerifiedUpdate | None:
        if not self.isolated:
            return self._check_here(self.installed_counter())
        answer = self._child("check")
        return VerifiedUpdate(**(answer["update"] | {"hardware": ()})) if answer["update"] else None

    def download(self, update: VerifiedUpdate, dest: Path) -> None:
        """Download through the TUF client (it checks length and hash while downloading) and move the
        file to ``dest``; the updater verifies it again before installing. ngclient does not resume:
        an interrupted download starts over."""
        if not self.isolated:
            self._download_here(update, dest, self.installed_counter())
            return
        self._child("download", sha256=update.sha256, target=update.target, dest=str(dest))

    def _child(self, command: str, **params) -> dict:
        params |= {
            "state_dir": str(self.state_dir),
            "hardware_class": self.hardware_class,
            "max_artifact_bytes": self.max_artifact_bytes,
            "installed_counter": self.installed_counter(),
        }
        try:
            done = subprocess.run(
                [sys.executable, "-m", "fleet_agent.ota_source", command, json.dumps(params)],
                capture_output=True,
                timeout=CHILD_TIMEOUT_S,
                check=False,
            )
            answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
            # No answer at all: treat as transient (the next check retries).
            raise UpdateRejected("download_failed", f"update worker failed: {exc}") from exc
        if "rejected" in answer:
            rejected = answer["rejected"]
            raise UpdateRejected(rejected["reason"], rejected["detail"], rejected["target"])
        return answer


def main(argv: list[str]) -> int:
    """The child process: one check or one download, answered as one JSON line on stdout."""
    from fleet_agent.enroll import load_enrollment

    command, params = argv[0], json.loads(argv[1])
    source = UptaneSource(
        enrollment=load_enrollment(Path(params["state_dir"])),
        state_dir=Path(params["state_dir"]),
        hardware_class=params["hardware_class"],
        max_artifact_bytes=params["max_artifact_bytes"],
        installed_counter=lambda: params["installed_counter"],
        isolated=False,
    )
    try:
        if command == "check":
            update = source.check()
            answer = {"update": dataclasses.asdict(update) | {"hardware": []} if update else None}
        else:
            stub = VerifiedUpdate(target=params["target"], length=0, sha256=params["sha256"])
            source.download(stub, Path(params["dest"]))
            answer = {"ok": True}
    except UpdateRejected as exc:
        answer = {"rejected": {"reason": exc.reason, "detail": exc.detail[:500], "target": exc.target}}
    print(json.dumps(answer), flush=True)
    return 0


def uptane_available() -> bool:
    """Without importing it (that is the memory the child process saves)."""
    return importlib.util.find_spec("tuf") is not None and (Path(__file__).parent / "uptane.py").exists()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
