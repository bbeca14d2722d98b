"""The compose stack names only commands and settings that exist: nothing lives only in docker/."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
PLATFORM_IMAGES = {"fleet-platform:latest"}
AGENT_IMAGES = {"fleet-agent:latest"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def settings_variables() -> set[str]:
    """Every variable fleet/settings.py reads through the env helpers (NAME and NAME_FILE for secrets)."""
    source = (ROOT / "fleet" / "settings.py").read_text()
    names = set(re.findall(r'env_(?:str|bool|int|list)\(\s*"([A-Z0-9_]+)"', source))
    return names | {f"{name}_FILE" for name in names}


def command_words(service: dict) -> list[str]:
    command = service.get("command") or []
    if isinstance(command, str):
        command = command.split()
    if command[:2] == ["sh", "-c"]:
        return command[2].split()
    return command


def test_compose_file_parses_with_docker_when_available():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI here; the YAML is still checked by the other tests")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker CLI here has no compose plugin; the YAML is still checked by the other tests")
    env = {
        "POSTGRES_PASSWORD": "x",
        "S3_ACCESS_KEY": "x",
        "S3_SECRET_KEY": "x",
        "FLEET_SECRET_KEY": "x",
        "FLEET_KEY_ENCRYPTION_SECRET": "x",
        "FLEET_PUBLIC_HOST": "fleet.test",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_manage_py_command_in_compose_exists():
    known = set(get_commands())
    used = set()
    for service in compose()["services"].values():
        words = command_words(service)
        for index, word in enumerate(words):
            if word == "manage.py":
                used.add(words[index + 1])
    assert used, "the compose file runs manage.py commands"
    assert used <= known, f"unknown management commands: {sorted(used - known)}"


def test_every_server_image_command_is_a_real_entry_point():
    for name, service in compose()["services"].items():
        if service.get("image") not in PLATFORM_IMAGES:
            continue
        program = command_words(service)[0]
        assert program in {"python", "gunicorn", "celery"}, f"{name} runs {program}"
        assert shutil.which(program, path=str(Path(sys.executable).parent)) or program == "python"


def test_simulator_command_is_a_fleet_agent_subcommand():
    services = [s for s in compose()["services"].values() if s.get("image") in AGENT_IMAGES]
    assert services
    for service in services:
        subcommand = service["command"][0]
        result = subprocess.run(
            [str(Path(sys.executable).parent / "fleet-agent"), subcommand, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        for flag in [word for word in service["command"] if word.startswith("--")]:
            assert flag in result.stdout, f"fleet-agent {subcommand} has no {flag}"


def test_every_environment_variable_set_is_read_by_the_settings():
    document = compose()
    known = settings_variables()
    server_env = document["x-server-env"]
    assert set(server_env) <= known, f"variables the settings never read: {sorted(set(server_env) - known)}"


def test_no_secret_values_in_the_repository():
    text = COMPOSE.read_text()
    for name in ("FLEET_SECRET_KEY", "FLEET_KEY_ENCRYPTION_SECRET", "POSTGRES_PASSWORD", "S3_SECRET_KEY"):
        assert re.search(rf"\${{{name}(:\?[^}}]*)?}}", text), f"{name} must come from the environment file"
    example = (ROOT / "docker" / ".env.example").read_text()
    assert re.search(r"^FLEET_SECRET_KEY=$", example, re.MULTILINE)
