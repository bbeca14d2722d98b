"""``fleet-agent``: enroll, run, status, install-model and simulate (docs/agent.md)."""

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from fleet_agent import __version__
from fleet_agent.enroll import EnrollError, Paths, certificate, enroll
from fleet_agent.fsutil import read_json
from fleet_agent.outbox import Outbox
from fleet_agent.slots import SlotStore
from fleet_agent.updates import provision


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def cmd_enroll(args) -> int:
    enrollment = enroll(
        server=args.server,
        token=args.token,
        state_dir=Path(args.dir),
        device_id=args.id,
        name=args.name,
        hardware_class=args.hardware_class,
        runtime=args.runtime,
        poll_interval_s=args.poll_interval,
        wait_s=args.wait,
    )
    print(f"enrolled as {enrollment['device_id']} ({enrollment['status']})")
    return 0


def cmd_run(args) -> int:
    from fleet_agent.agent import Agent

    agent = Agent(Path(args.dir))
    agent.run(_stop_event())
    return 0


def status_report(state_dir: Path) -> dict:
    paths = Paths(state_dir)
    enrollment = read_json(paths.enrollment) or {}
    report = {"device_id": enrollment.get("device_id"), "enrollment": enrollment.get("status", "not enrolled")}
    if paths.cert.exists():
        cert = certificate(state_dir)
        report["certificate_expires"] = cert.not_valid_after_utc.isoformat()
    runtime = read_json(paths.runtime) or {}
    alive = False
    if runtime.get("pid"):
        try:
            os.kill(runtime["pid"], 0)
            alive = True
        except OSError:
            alive = False
    report["agent_running"] = alive
    report["connected"] = bool(alive and runtime.get("connected"))
    report["last_error"] = runtime.get("last_error", "")
    if (state_dir / "models").exists():
        store = SlotStore(state_dir / "models")
        report["model"] = store.describe()
        journal = read_json(store.root / "journal.json")
        report["update_in_progress"] = journal.get("phase") if journal else None
    if paths.queue.exists():
        outbox = Outbox(paths.queue)
        report["queue_depth"] = outbox.depth()
        report["queue_messages"] = outbox.message_count()
        report["dropped_unreported"] = outbox.dropped()
        outbox.close()
    policy = read_json(state_dir / "policy.json")  # the last verified envelope (the agent re-verifies it)
    payload = policy.get("payload") if isinstance(policy, dict) else None
    report["policy_version"] = payload.get("version") if isinstance(payload, dict) else None
    return report


def cmd_status(args) -> int:
    report = status_report(Path(args.dir))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for key, value in report.items():
            print(f"{key:22} {value}")
    return 0


def cmd_install_model(args) -> int:
    store = SlotStore(Path(args.dir) / "models")
    provision(store, Path(args.file), name=args.name, version=args.version, release_counter=args.release_counter)
    print(f"installed {args.name} {args.version} into slot {store.active_slot()}")
    return 0


def cmd_simulate(args) -> int:
    from fleet_agent.simulate import Simulator, load_profiles

    simulator = Simulator(
        server=args.server,
        token=args.token,
        devices=args.devices,
        base_dir=Path(args.dir),
        prefix=args.prefix,
        records_per_s=args.rate,
        profiles=load_profiles(Path(args.profiles)) if args.profiles else None,
        workers=args.workers,
    )
    stop = _stop_event()
    if args.duration:
        threading.Timer(args.duration, stop.set).start()
    simulator.run(stop)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-agent", description="Device agent of the edge-AI fleet platform.")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("enroll", help="make the device key, enroll, wait for approval if needed")
    p.add_argument("--server", required=True, help="platform URL, e.g. https://fleet.example.com")
    p.add_argument("--token", required=True, help="enrollment token")
    p.add_argument("--id", help="requested device id (default: the platform assigns one)")
    p.add_argument("--dir", required=True, help="state directory")
    p.add_argument("--name", default="")
    p.add_argument("--hardware-class", default="")
    p.add_argument("--runtime", default="")
    p.add_argument("--poll-interval", type=float, default=10.0, help="seconds between approval checks")
    p.add_argument("--wait", type=float, default=None, help="give up waiting for approval after this many seconds")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("run", help="run the agent (MQTT session, telemetry, updates)")
    p.add_argument("--dir", required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="identity, connection, active model, queue depth, policy version")
    p.add_argument("--dir", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("install-model", help="factory-install a model into the A/B slots")
    p.add_argument("--dir", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--release-counter", type=int, default=0)
    p.set_defaults(func=cmd_install_model)

    p = sub.add_parser("simulate", help="run N virtual devices in this process")
    p.add_argument("--server", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--devices", type=int, default=25)
    p.add_argument("--dir", default="var/sim", help="base folder for the devices' state directories")
    p.add_argument("--prefix", default="sim")
    p.add_argument("--rate", type=float, default=1.0, help="inference records per second per device")
    p.add_argument("--profiles", help="JSON file: model version -> telemetry profile")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        return args.func(args)
    except EnrollError as exc:
        print(f"fleet-agent: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # bad agent.json, unreadable state directory, ...
        print(f"fleet-agent: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
