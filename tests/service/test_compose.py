"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the compose file against the Compose
Specification's JSON schema (vendored here, see README.md), and against the project: every service's command is a
real `regionscribe` command line, every environment variable is a setting the project reads (or one Label Studio
reads), every setting can be passed, mounts sit where the settings point, and every setting is in the README's
table."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest
import yaml

from regionscribe.backend.ops.cli import parser
from regionscribe.backend.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).with_name("compose-spec.json")

SETTINGS = {f.name.upper() for f in fields(Settings)}
SETTING_ALIASES = {"LABEL_STUDIO_HOST", "LABEL_STUDIO_ACCESS_TOKEN", "DATABASE_URL"}  # also read by from_env
DEFAULTS = {f.name.upper(): f.default for f in fields(Settings)}

# Variables of the Label Studio 1.23 image this file sets, each with where Label Studio reads it
# (label_studio/core/settings/base.py unless said otherwise; its get_env() also tries the LABEL_STUDIO_ prefix).
LABEL_STUDIO_VARIABLES = {
    "ML_BLOCK_LOCAL_IP": "ML backends on private/loopback addresses refused unless false",
    "SSRF_PROTECTION_ENABLED": "webhooks and storage endpoints on private addresses refused unless false",
    "LATEST_VERSION_CHECK": "version check against PyPI at start",
    "COLLECT_ANALYTICS": "usage analytics",
    "LOCAL_FILES_SERVING_ENABLED": "serve /data/local-files",
    "LOCAL_FILES_DOCUMENT_ROOT": "root folder of /data/local-files",
    "LABEL_STUDIO_USERNAME": "first user (label_studio/server.py: get_env('USERNAME'))",
    "LABEL_STUDIO_PASSWORD": "its password (label_studio/server.py: get_env('PASSWORD'))",
    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "legacy Token keys for new organisations",
}

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $VAR, $$)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        have = env.get(name)
        if op == ":-":
            return have if have else arg
        if op == "-":
            return have if have is not None else arg
        if op in (":?", "?"):
            if (not have) if op == ":?" else have is None:
                raise ValueError(f"required variable {name} is unset: {arg}")
            return have
        return have or ""

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # safe_load resolves the `<<:` merge keys, as compose does


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    """The file as `docker compose config` would see it with no .env file and nothing exported."""
    return interpolate(raw, {})


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def project_services(compose: dict) -> dict[str, dict]:
    """Services that run the regionscribe image (built from this repository's Dockerfile)."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def mounts(service: dict) -> dict[str, str]:
    """volume name → mount path (short syntax `name:/path[:ro]` or long syntax)."""
    out = {}
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v.get("source"), v["target"]
        out[source] = target
    return out


# ------------------------------------------------------------------------------------------------ the schema


def test_schema_is_the_vendored_compose_spec():
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert (SCHEMA.parent / "LICENSE.compose-spec").read_text().count("Apache License") >= 1


def test_compose_file_matches_the_compose_specification(raw, compose):
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    for label, doc in (("as written", raw), ("interpolated", compose)):
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, f"{label}: " + "\n".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])


def test_schema_catches_a_broken_file(raw):
    """The validation above has teeth: a misspelt key and a wrong type are refused."""
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    broken = json.loads(json.dumps(raw))
    broken["services"]["backend"]["healthcheck"]["retrys"] = 3
    broken["services"]["redis"]["ports"] = "6379:6379"
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("retrys" in m for m in messages), messages
    assert any("is not of type 'array'" in m for m in messages), messages


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_docker_compose_config_when_the_plugin_is_there():
    """Where the compose CLI plugin exists (it validates without an engine), it must accept the file too."""
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin here")
    for profile in ("cpu", "gpu"):
        done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "--profile", profile, "config", "--quiet"],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COMPOSE_PROFILES": ""})
        assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------------------- against the project


def test_services_and_profiles(compose):
    services = compose["services"]
    assert {"redis", "labelstudio", "backend", "worker-gpu", "worker-cpu", "trainer", "ingest"} <= set(services)
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    device = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and int(device["count"]) == 1
    assert services["labelstudio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert services["redis"]["image"].startswith("redis:7")
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    for name, s in services.items():  # nothing another service waits on is profile-gated or without healthcheck
        for dep, cond in (s.get("depends_on") or {}).items():
            assert cond["condition"] == "service_healthy", (name, dep)
            assert "healthcheck" in services[dep] and "profiles" not in services[dep], (name, dep)


def test_every_command_is_a_regionscribe_command_line(compose):
    settings = Settings()
    queues = {settings.inference_queue, settings.training_queue, settings.ingest_queue}
    seen_queues = set()
    for name, s in project_services(compose).items():
        command = s["command"]
        assert isinstance(command, list), f"{name}: use the exec (list) form"
        try:
            args = parser().parse_args(command)
        except SystemExit:
            pytest.fail(f"{name}: `regionscribe {' '.join(command)}` is not a valid command line")
        if args.command == "worker":
            assert args.queue and set(args.queue) <= queues, (name, args.queue)
            seen_queues |= set(args.queue)
        else:
            assert args.command == "serve", name
    assert seen_queues == queues, "every queue the project has gets a worker service"


def test_dockerfile_entrypoint_and_user():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r'^ENTRYPOINT \["regionscribe"\]', text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'regionscribe = "regionscribe.backend.ops.cli:main"' in pyproject
    for path in ("/var/lib/regionscribe/data", "/var/lib/regionscribe/registry", "/images"):
        assert path in text, f"the image creates and owns the mount point {path}"


def test_every_variable_is_a_setting_or_a_documented_label_studio_one(compose):
    for name, s in compose["services"].items():
        env = env_of(s)
        if name in project_services(compose):
            unknown = set(env) - SETTINGS - SETTING_ALIASES
            assert not unknown, f"{name} sets variables regionscribe does not read: {sorted(unknown)}"
        elif name == "labelstudio":
            unknown = set(env) - set(LABEL_STUDIO_VARIABLES)
            assert not unknown, f"labelstudio sets undocumented variables: {sorted(unknown)}"
        else:
            assert not env, f"{name} sets variables this test does not know: {sorted(env)}"


def test_label_studio_reads_the_variables_set_for_it(compose):
    """Against Label Studio's own source when the e2e venv (.lsvenv, scripts/labelstudio.sh) is there."""
    found = sorted((ROOT / ".lsvenv").glob("lib/python3*/site-packages/label_studio"))
    if not found:
        pytest.skip("no .lsvenv with label_studio (made by scripts/labelstudio.sh for the e2e tests)")
    sources = "\n".join(p.read_text(errors="replace") for p in
                        [*found[0].joinpath("core", "settings").glob("*.py"), found[0] / "server.py"])
    for var in env_of(compose["services"]["labelstudio"]):
        short = var.removeprefix("LABEL_STUDIO_")
        assert re.search(rf"get_(?:bool_)?env\(\s*['\"](?:LABEL_STUDIO_)?{short}['\"]", sources), var


def test_every_setting_can_be_passed_to_the_project_services(compose):
    passed = set()
    for s in project_services(compose).values():
        passed |= set(env_of(s))
    missing = SETTINGS - passed
    assert not missing, f"settings docker-compose.yml does not pass (add to x-regionscribe-env): {sorted(missing)}"


def test_settings_parse_and_mounts_match(compose):
    """Each service's environment (no .env) gives valid settings, and the folders they name are its volumes."""
    for name, s in project_services(compose).items():
        settings = Settings.from_env(env_of(s))  # raises on a value of the wrong type
        assert settings.redis_url == "redis://redis:6379/0"
        assert settings.label_studio_url == "http://labelstudio:8080"
        m = mounts(s)
        if name in ("backend", "trainer", "ingest"):
            assert m.get("store") == settings.data_dir, name
            assert m.get("image-cache") == str(Path(settings.data_dir) / "images"), name
        if "registry" in m:
            assert m["registry"] == settings.registry_path, name
        if name != "backend":
            assert m.get("images") == settings.image_root, name
    declared = set(compose["volumes"])
    used = {src for s in compose["services"].values() for src in mounts(s) if not src.startswith((".", "/"))}
    assert used == declared


def test_backend_healthcheck_and_port(compose):
    backend = compose["services"]["backend"]
    env = env_of(backend)
    settings = Settings.from_env(env)
    probe = " ".join(backend["healthcheck"]["test"])
    assert f"http://127.0.0.1:{settings.port}/health" in probe
    assert any(p.endswith(f":{settings.port}") for p in backend["ports"])
    assert compose["services"]["labelstudio"]["environment"]["LATEST_VERSION_CHECK"] == "false"

    from regionscribe.backend.web.app import create_app

    assert "/health" in {r.rule for r in create_app(settings.replace(redis_url=None)).url_map.iter_rules()}


def test_every_setting_is_in_the_readme_settings_table():
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for line in section.splitlines():
        if line.startswith("|"):
            first_cell = line.split("|")[1]
            documented |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell))
    missing = sorted(SETTINGS - documented)
    assert not missing, f"settings missing from README.md's Settings table: {missing}"
