"""Keys of the update repositories.

    manage.py ota_keys init [--root-keys 3 --root-threshold 2] [--offline-root --export-dir DIR]
    manage.py ota_keys rotate --repository image|director --role ROLE [--root-key FILE ...] [--export-dir DIR]
    manage.py ota_keys list

Offline root keys are written as PEM files encrypted with the passphrase read from the environment
variable OTA_ROOT_PASSPHRASE (never a command-line argument, which other users can see in ps).
"""

import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fleet.errors import ApiError
from fleet.services import Actor
from fleet_agent.identity import write_private_file
from ota import keys, services
from ota.models import SigningKey

ACTOR = Actor.system("ota_keys command")


def _passphrase(required: bool) -> str | None:
    value = os.environ.get("OTA_ROOT_PASSPHRASE")
    if required and not value:
        raise CommandError("Set OTA_ROOT_PASSPHRASE (encrypts the exported root keys; needed to load them again).")
    return value


def _export(exported: dict[str, list[str]], export_dir: str | None) -> None:
    if not exported:
        return
    if not export_dir:
        raise CommandError("--export-dir is required for offline root keys")
    folder = Path(export_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for repository, pems in exported.items():
        for pem in pems:
            keyid = keys.signer_from_pem(pem.encode(), _passphrase(True)).public_key.keyid
            path = folder / f"{repository}-root-{keyid[:16]}.pem"
            write_private_file(path, pem.encode())
            print(f"wrote {path}")


class Command(BaseCommand):
    help = "Create, rotate and list the signing keys of the image repository and the director."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        init = sub.add_parser("init")
        init.add_argument("--root-keys", type=int, default=3)
        init.add_argument("--root-threshold", type=int, default=2)
        init.add_argument("--offline-root", action="store_true", help="export root keys instead of storing them")
        init.add_argument("--export-dir")
        rotate = sub.add_parser("rotate")
        rotate.add_argument("--repository", choices=["image", "director"], required=True)
        rotate.add_argument("--role", choices=["root", "targets", "snapshot", "timestamp", "director"], required=True)
        rotate.add_argument("--root-key", action="append", default=[], help="an exported root key file (repeat)")
        rotate.add_argument("--export-dir")
        sub.add_parser("list")

    def handle(self, *args, action: str, **options):
        try:
            if action == "init":
                result = services.repositories_init(
                    actor=ACTOR,
                    root_keys=options["root_keys"],
                    root_threshold=options["root_threshold"],
                    offline_root=options["offline_root"],
                    export_passphrase=_passphrase(options["offline_root"]),
                )
                _export(result.exported_root_keys, options["export_dir"])
            elif action == "rotate":
                passphrase = _passphrase(bool(options["root_key"]))
                signers = [keys.signer_from_pem(Path(p).read_bytes(), passphrase) for p in options["root_key"]]
                result = services.key_rotate(
                    actor=ACTOR,
                    repository_name=options["repository"],
                    role=options["role"],
                    offline_root_signers=signers,
                    export_passphrase=passphrase,
                )
                _export(result.exported_root_keys, options["export_dir"])
        except ApiError as exc:
            raise CommandError(f"{exc.error_code}: {exc.detail}") from exc
        for row in SigningKey.objects.order_by("repository", "role", "id"):
            state = "active" if row.active else "retired"
            where = "online" if row.online else "offline"
            self.stdout.write(f"{row.repository:9} {row.role:9} {row.keyid[:16]} {state:7} {where}")
