#!/usr/bin/env python3
"""Render mosquitto.conf for a state folder that holds the broker's certificates and ACLs (stdlib only).

    render_config.py --state-dir DIR [--device-port 8883] [--platform-port 8884] [--bind 0.0.0.0] [--out FILE]

The certificates are written beforehand by `manage.py broker_setup`, which also copies the ACL files
of this folder into the state folder and calls this script. Everything Mosquitto reads is in the state
folder, so a broker that drops to its own user never needs to reach into the source tree (which may
not be readable by that user).
"""

import argparse
import os
import string
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def render(
    *,
    state_dir: Path,
    device_port: int = 8883,
    platform_port: int = 8884,
    bind_address: str = "0.0.0.0",  # noqa: S104 - the broker is meant to be reachable by devices
    platform_bind_address: str = "127.0.0.1",
    log_dest: str = "stderr",
    run_as_user: str | None = None,
) -> str:
    template = string.Template((CONFIG_DIR / "mosquitto.conf.template").read_text())
    return template.substitute(
        state_dir=str(state_dir),
        device_port=device_port,
        platform_port=platform_port,
        bind_address=bind_address,
        platform_bind_address=platform_bind_address,
        log_dest=log_dest,
        # Started as root, Mosquitto drops to the `mosquitto` user unless told otherwise.
        user_line=f"user {run_as_user}" if run_as_user else "",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--device-port", type=int, default=8883)
    parser.add_argument("--platform-port", type=int, default=8884)
    parser.add_argument("--bind", default="0.0.0.0")  # noqa: S104
    parser.add_argument("--platform-bind", default="127.0.0.1")
    parser.add_argument("--log-dest", default="stderr")
    parser.add_argument("--user", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = render(
        state_dir=args.state_dir.resolve(),
        device_port=args.device_port,
        platform_port=args.platform_port,
        bind_address=args.bind,
        platform_bind_address=args.platform_bind,
        log_dest=args.log_dest,
        run_as_user=args.user,
    )
    out = args.out or args.state_dir / "mosquitto.conf"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(out)


if __name__ == "__main__":
    main()
