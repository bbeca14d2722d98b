from pathlib import Path

from django.core.management.base import BaseCommand

from devices.authority import active_ca, current_crl_pem


class Command(BaseCommand):
    help = "Write the device CA certificate and the current revocation list (PEM) for the broker."

    def add_arguments(self, parser):
        parser.add_argument("--crl", required=True, type=Path, help="Where to write the CRL.")
        parser.add_argument("--ca", type=Path, help="Where to write the CA certificate.")

    def handle(self, *args, crl: Path, ca: Path | None, **options):
        # Write then rename, so the broker never reads a half-written file.
        for path, content in ((crl, current_crl_pem()), (ca, active_ca().certificate_pem if ca else None)):
            if path is None:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(content)
            tmp.chmod(0o644)
            tmp.replace(path)
            self.stdout.write(f"wrote {path}")
