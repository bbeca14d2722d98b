"""The embedded defaults (what `make run` uses): SQLite in a local state folder, no system service.

The one place the suite uses SQLite: everything else runs on PostgreSQL.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_fresh_state_dir_migrates_and_prints_a_first_login(tmp_path):
    state = tmp_path / "state"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "DATABASE_", "CELERY_", "MQTT_", "STORAGE_"))
    }
    env |= {"FLEET_DEBUG": "1", "FLEET_STATE_DIR": str(state), "DATABASE_URL": f"sqlite:///{state / 'fleet.sqlite3'}"}
    state.mkdir()
    migrated = manage("migrate", "--no-input", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert (state / "fleet.sqlite3").exists()

    first = manage("ensure_operator", env=env)
    assert first.returncode == 0, first.stderr
    password = re.search(r"^Password:\s+(\S+)\s+\(shown once", first.stdout, re.M)
    token = re.search(r"^API token: ([0-9a-f]{40})$", first.stdout, re.M)
    assert password and len(password.group(1)) >= 12, first.stdout
    assert token, first.stdout

    again = manage("ensure_operator", env=env)
    assert "Password:  unchanged" in again.stdout
    assert f"API token: {token.group(1)}" in again.stdout

    # Enrollment's hand-written SQL (UPDATE ... RETURNING) runs on the embedded SQLite too.
    enrolled = manage(
        "shell",
        "-c",
        "from tests.factories import make_device, make_token; "
        "result, _ = make_device('cam-1', token=make_token(max_uses=1)); "
        "print(result.device.status, result.certificate_pem is not None)",
        env=env,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    assert enrolled.stdout.splitlines()[-1].split() == ["active", "True"], enrolled.stdout

    # The director's hand-written SQL reads datetimes back from SQLite too (signing, then the cached path).
    assert manage("ota_keys", "init", env=env).returncode == 0
    director = manage(
        "shell",
        "-c",
        "from django.test import Client; from tests.factories import make_device, make_token; "
        "result, _ = make_device('cam-2', token=make_token(max_uses=1)); "
        "auth = {'HTTP_AUTHORIZATION': 'Device ' + result.device_token}; client = Client(HTTP_HOST='localhost'); "
        "print(*[client.get('/ota/director/timestamp.json', **auth).status_code for _ in range(2)])",
        env=env,
    )
    assert director.returncode == 0, director.stderr
    assert director.stdout.splitlines()[-1].split() == ["200", "200"], director.stdout + director.stderr

    # Enrollment over HTTP reads both update roots and the policy key with hand-written SQL too.
    over_http = manage(
        "shell",
        "-c",
        "import json; from django.test import Client; from fleet_agent.identity import build_csr_pem, "
        "generate_private_key; from tests.factories import make_token; "
        "body = {'token': make_token(max_uses=1), 'csr': build_csr_pem(generate_private_key(), 'cam-3')}; "
        "response = Client(HTTP_HOST='localhost').post('/api/v1/enroll/', body, content_type='application/json'); "
        "trust = response.json()['update_trust']; "
        "print(response.status_code, json.loads(trust['image_root'])['signed']['_type'], "
        "json.loads(trust['director_root'])['signed']['_type'], "
        "response.json()['policy_public_key'].startswith('-----BEGIN PUBLIC KEY-----'))",
        env=env,
    )
    assert over_http.returncode == 0, over_http.stderr
    assert over_http.stdout.splitlines()[-1].split() == ["201", "root", "root", "True"], over_http.stdout
