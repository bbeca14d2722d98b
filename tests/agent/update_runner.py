"""A device process for the power-loss tests: ``python -m tests.agent.update_runner STATE SPEC``.

It does what the agent does at start (recovery, reported through the real on-disk outbox), prints
``ready``, then applies the update described by SPEC (a JSON file) from the local source, slowly enough
that a kill lands in any phase. With ``--recover-only`` it stops after recovery. ``KILL_AT=<state>``
(or ``switch``) makes it SIGKILL itself exactly when that state starts (or right after the slot switch).
"""

import json
import os
import signal
import sys
from pathlib import Path

from fleet_agent.outbox import Outbox
from fleet_agent.slots import SlotStore
from fleet_agent.updates import Updater, UpdateSettings, VerifiedUpdate
from tests.agent.fakes import LocalSource


def main() -> None:
    state, spec_path = Path(sys.argv[1]), Path(sys.argv[2])
    spec = json.loads(spec_path.read_text())
    outbox = Outbox(state / "queue.db")

    kill_at = os.environ.get("KILL_AT", "")

    def report(status, target, reason="", detail=""):
        outbox.enqueue("ota/status", {"target": target, "state": status, "reason": reason, "detail": detail})
        if status == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # power cut right as this phase starts

    update = VerifiedUpdate(**(spec["update"] | {"hardware": tuple(spec["update"]["hardware"])}))
    updater = Updater(
        store=SlotStore(state / "models"),
        source=LocalSource(update, Path(spec["serve"]), chunk=spec["chunk"], delay_s=spec["delay_s"]),
        report=report,
        settings=UpdateSettings(hardware_class="test-hw"),
    )
    updater.recover()
    if kill_at == "switch":
        switch = updater.store.switch

        def switch_then_die(slot):
            switch(slot)
            os.kill(os.getpid(), signal.SIGKILL)

        updater.store.switch = switch_then_die
    print("ready", flush=True)
    if "--recover-only" not in sys.argv:
        updater.check_and_apply()
        print("done", flush=True)


if __name__ == "__main__":
    main()
