from django.core.management.base import BaseCommand, CommandError

from devices.models import DeviceGroup
from devices.services import enrollment_token_create, group_create
from fleet.errors import ApiError
from fleet.services import Actor


class Command(BaseCommand):
    help = "Create an enrollment token and print its secret (shown once). For scripts and the simulated fleet."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--max-uses", type=int, default=1)
        parser.add_argument("--group", default=None, help="Existing group name, or a new one to create.")
        parser.add_argument("--tag", action="append", default=[], dest="tags")
        parser.add_argument("--pending", action="store_true", help="Devices wait for approval.")

    def handle(self, *args, name, max_uses, group, tags, pending, **options):
        actor = Actor.system("cli")
        try:
            group_obj = None
            if group:
                group_obj = DeviceGroup.objects.filter(name=group).first() or group_create(actor=actor, name=group)
            issued = enrollment_token_create(
                actor=actor,
                name=name,
                group=group_obj,
                tags=tags,
                max_uses=max_uses,
                auto_accept=not pending,
            )
        except ApiError as exc:
            raise CommandError(str(exc.detail)) from exc
        self.stdout.write(issued.secret)
