from django.core.management.base import BaseCommand

from fleet.models import Role
from fleet.services import operator_ensure


class Command(BaseCommand):
    help = "Create an operator account if it does not exist and print how to log in and its API token."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--role", default=Role.ADMIN, choices=[r.value for r in Role])
        parser.add_argument("--password", default=None, help="Only used when the account is created.")
        parser.add_argument("--url", default="http://127.0.0.1:8000")

    def handle(self, *args, username, role, password, url, **options):
        creds = operator_ensure(username=username, role=role, password=password)
        self.stdout.write(f"Console:   {url}/  (user {creds.user.username!r}, role {creds.user.role})")
        if creds.password:
            self.stdout.write(f"Password:  {creds.password}   (shown once; change it in the console)")
        else:
            self.stdout.write("Password:  unchanged (set when the account was created)")
        self.stdout.write(f"API token: {creds.api_token}")
        self.stdout.write(f'           curl -H "Authorization: Token {creds.api_token}" {url}/api/v1/devices/')
