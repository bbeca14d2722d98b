"""The agent's update source over TUF: an adapter from ``fleet_agent.uptane`` (director + image
repository verification and download) to the ``UpdateSource`` interface the updater uses.

The trusted roots and repository URLs come from the enrollment response (``update_trust``), never from
a cache; the TUF metadata copies live in ``STATE/tuf/``.
"""

import os
from collections.abc import Callable
from pathlib import Path

from fleet_agent.updates import UpdateRejected, VerifiedUpdate


class UptaneSource:
    def __init__(
        self,
        *,
        enrollment: dict,
        state_dir: Path,
        hardware_class: str,
        max_artifact_bytes: int,
        installed_counter: Callable[[], int | None],
    ):
        from fleet_agent import uptane

        self._uptane = uptane
        trust = enrollment["update_trust"]
        self.client = uptane.UptaneClient(
            uptane.TrustConfig(
                device_id=enrollment["device_id"],
                hardware_class=hardware_class,
                device_token=enrollment["device_token"],
                image_root=trust["image_root"].encode(),
                director_root=trust["director_root"].encode(),
                image_url=trust["image_url"],
                director_url=trust["director_url"],
                max_artifact_bytes=max_artifact_bytes,
            ),
            state_dir / "tuf",
        )
        self.installed_counter = installed_counter
        self._assignment = None

    def check(self) -> VerifiedUpdate | None:
        try:
            assignment = self.client.check(installed_counter=self.installed_counter())
        except self._uptane.UpdateRejected as exc:
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

    def download(self, update: VerifiedUpdate, dest: Path) -> None:
        """Download through the TUF client (it checks length and hash while downloading) and move the
        file to ``dest``; the updater verifies it again before installing. ngclient does not resume:
        an interrupted download starts over."""
        assignment = self._assignment
        if assignment is None or assignment.sha256 != update.sha256:
            if self.check() is None or self._assignment.sha256 != update.sha256:
                raise UpdateRejected("assignment_changed", "the director no longer assigns this target", update.target)
            assignment = self._assignment
        try:
            verified = self.client.download(assignment, dest.parent / "tuf-download")
        except self._uptane.UpdateRejected as exc:
            raise UpdateRejected(exc.code, exc.message, update.target) from exc
        os.replace(verified.path, dest)


def uptane_available() -> bool:
    try:
        import fleet_agent.uptane  # noqa: F401
    except ImportError:
        return False
    return True
