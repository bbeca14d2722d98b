"""Releases from the command line.

manage.py ota_release revoke NAME VERSION [--reason TEXT]
"""

from django.core.management.base import BaseCommand, CommandError

from fleet.services import Actor
from ota import services
from ota.models import Artifact


class Command(BaseCommand):
    help = "Revoke a release: remove it from the image repository (snapshot and timestamp re-issued)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        revoke = sub.add_parser("revoke")
        revoke.add_argument("name")
        revoke.add_argument("version")
        revoke.add_argument("--reason", default="")

    def handle(self, *args, action: str, name: str, version: str, reason: str, **options):
        artifact = Artifact.objects.filter(name=name, version=version).first()
        if artifact is None:
            raise CommandError(f"no release {name}@{version}")
        artifact = services.artifact_revoke(actor=Actor.system("ota_release command"), artifact=artifact, reason=reason)
        self.stdout.write(f"revoked {artifact} at {artifact.revoked_at:%Y-%m-%d %H:%M:%S}")
