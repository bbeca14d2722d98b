"""With DEBUG off the platform refuses to start on missing, published or short secrets."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.settings import INSECURE_DEFAULT_KEY_ENCRYPTION_SECRET, INSECURE_DEFAULT_SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]
GOOD = "s" * 20 + "-a-long-random-enough-value"
SETUP_AND_PRINT = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"


def start_django(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    clean |= {"DJANGO_SETTINGS_MODULE": "fleet.settings", "FLEET_STATE_DIR": os.environ["FLEET_STATE_DIR"]}
    clean |= env
    return subprocess.run(
        [sys.executable, "-c", SETUP_AND_PRINT], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLEET_KEY_ENCRYPTION_SECRET": GOOD}, "FLEET_SECRET_KEY is missing or set to the published default"),
        (
            {"FLEET_SECRET_KEY": INSECURE_DEFAULT_SECRET_KEY, "FLEET_KEY_ENCRYPTION_SECRET": GOOD},
            "FLEET_SECRET_KEY is missing or set to the published default",
        ),
        ({"FLEET_SECRET_KEY": GOOD}, "FLEET_KEY_ENCRYPTION_SECRET is missing or set to the published default"),
        (
            {"FLEET_SECRET_KEY": GOOD, "FLEET_KEY_ENCRYPTION_SECRET": INSECURE_DEFAULT_KEY_ENCRYPTION_SECRET},
            "FLEET_KEY_ENCRYPTION_SECRET is missing or set to the published default",
        ),
        ({"FLEET_SECRET_KEY": "short", "FLEET_KEY_ENCRYPTION_SECRET": GOOD}, "at least 32 characters"),
        (
            {"FLEET_SECRET_KEY": GOOD, "FLEET_KEY_ENCRYPTION_SECRET": GOOD, "FLEET_DEBUG": "maybe"},
            "FLEET_DEBUG='maybe' is not a boolean",
        ),
        (
            {"FLEET_SECRET_KEY_FILE": "/nonexistent/secret", "FLEET_KEY_ENCRYPTION_SECRET": GOOD},
            "FLEET_SECRET_KEY_FILE='/nonexistent/secret' cannot be read",
        ),
    ],
    ids=["key-missing", "key-default", "kek-missing", "kek-default", "key-short", "debug-not-bool", "file-unreadable"],
)
def test_without_debug_start_up_fails_with_a_clear_message(env, message):
    result = start_django(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_good_secrets_start():
    result = start_django(FLEET_SECRET_KEY=GOOD, FLEET_KEY_ENCRYPTION_SECRET=GOOD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == GOOD


def test_secret_can_come_from_a_file(tmp_path):
    secret_file = tmp_path / "secret_key"
    secret_file.write_text(GOOD + "-from-file\n")
    result = start_django(FLEET_SECRET_KEY_FILE=str(secret_file), FLEET_KEY_ENCRYPTION_SECRET=GOOD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == GOOD + "-from-file"


def test_debug_run_starts_on_the_published_defaults():
    result = start_django(FLEET_DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == INSECURE_DEFAULT_SECRET_KEY
