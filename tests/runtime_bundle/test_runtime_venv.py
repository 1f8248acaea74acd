"""A runtime-only venv installed offline from a bundle: the runtime works, the engine is absent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.bundles import RuntimeBundle, install_runtime_venv, offline_pip_env

#: Distributions of the engine extra (and of the old all-in-one install) a device must not get.
ENGINE_ONLY = {
    "cryptography",
    "jinja2",
    "sqlalchemy",
    "psycopg",
    "psycopg-binary",
    "fastapi",
    "starlette",
    "uvicorn",
    "rich",
    "croniter",
    "orjson",
    "rapidyaml",
    "requests",
}

#: Everything a runtime-only venv may hold: the project, its dependencies, and pip.
RUNTIME_DISTRIBUTIONS = {
    "fleet-rollout",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-extensions",
    "typing-inspection",
    "pyyaml",
    "psutil",
    "pip",
}

#: What Python's venv module itself puts beside pip (3.11 and older: setuptools).
VENV_EXTRAS = {"setuptools"} if sys.version_info < (3, 12) else set()


@pytest.fixture(scope="module")
def runtime_venv(runtime_bundle: RuntimeBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a venv holding only the runtime, installed from the bundle."""
    venv = tmp_path_factory.mktemp("runtime-venv") / "venv"
    return install_runtime_venv(runtime_bundle.directory, venv)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, env=offline_pip_env(), timeout=120, check=False
    )


def _device_config(tmp_path: Path, bundle: RuntimeBundle) -> Path:
    config = tmp_path / "device.yaml"
    doc = {
        "device": "field-0001",
        "agent_root": str(tmp_path / "agent"),
        "state_dir": str(tmp_path / "state"),
        "trusted_keys": [bundle.public_key],
    }
    config.write_text(yaml.safe_dump(doc))
    return config


@pytest.mark.slow
def test_only_runtime_distributions_installed(runtime_venv: Path) -> None:
    """pip list of the venv shows the runtime's dependencies and pip, no engine package."""
    run = _run([str(runtime_venv / "python"), "-m", "pip", "list", "--format", "json"])
    assert run.returncode == 0, run.stderr
    names = {d["name"].lower().replace("_", "-") for d in json.loads(run.stdout)}
    assert not names & ENGINE_ONLY
    assert names >= RUNTIME_DISTRIBUTIONS
    assert names - RUNTIME_DISTRIBUTIONS <= VENV_EXTRAS


@pytest.mark.slow
def test_agent_runtime_runs(
    runtime_venv: Path, runtime_bundle: RuntimeBundle, tmp_path: Path
) -> None:
    """`agent-runtime --help` and `agent-runtime status` work in the runtime-only venv."""
    help_run = _run([str(runtime_venv / "agent-runtime"), "--help"])
    assert help_run.returncode == 0, help_run.stderr
    assert "converge" in help_run.stdout
    config = _device_config(tmp_path, runtime_bundle)
    runtime = str(runtime_venv / "agent-runtime")
    status = _run([runtime, "status", "--json", "--config", str(config)])
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["device"] == "field-0001"
    assert doc["installed"] is None


@pytest.mark.slow
def test_engine_says_what_to_install(runtime_venv: Path) -> None:
    """`engine` without the engine extra prints one line naming the extra and exits 1."""
    run = _run([str(runtime_venv / "engine"), "plan"])
    assert run.returncode == 1
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert "pip install 'fleet-rollout[engine]'" in lines[0]
    assert "Traceback" not in run.stderr


@pytest.mark.slow
def test_bundle_verifies_without_cryptography(
    runtime_venv: Path, runtime_bundle: RuntimeBundle, tmp_path: Path
) -> None:
    """The runtime verifies the bundle's signature through libcrypto, without cryptography,
    and refuses a bundle whose manifest changed after signing."""
    copy = runtime_bundle.copy_to(tmp_path)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from states import _ed25519\n"
        "from states.bundle import BundleError, verify_bundle\n"
        "from states.signing import raw_trusted_keys\n"
        "keys = raw_trusted_keys([sys.argv[2]])\n"
        "print(verify_bundle(Path(sys.argv[1]), keys).target, _ed25519.backend())\n"
        "manifest = Path(sys.argv[1]) / 'bundle.json'\n"
        "manifest.write_bytes(manifest.read_bytes().replace(b'\"3.', b'\"4.', 1))\n"
        "try:\n"
        "    verify_bundle(Path(sys.argv[1]), keys)\n"
        "except BundleError as e:\n"
        "    print('refused:', e)\n"
    )
    run = _run([str(runtime_venv / "python"), "-c", script, str(copy), runtime_bundle.public_key])
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.splitlines()
    assert first == f"{runtime_bundle.target} libcrypto"
    assert second.startswith("refused:") and "does not match the manifest bytes" in second


@pytest.mark.slow
def test_no_ed25519_backend_is_a_clear_refusal(
    runtime_venv: Path, runtime_bundle: RuntimeBundle
) -> None:
    """Without a usable libcrypto and without cryptography, verification refuses with a
    SignatureError saying what to install (never an ImportError)."""
    script = (
        "import sys\n"
        "from states import _ed25519, signing\n"
        "_ed25519._libcrypto_verifier = lambda: None\n"
        "keys = signing.raw_trusted_keys([sys.argv[1]])\n"
        "try:\n"
        "    signing.verify_raw(b'x', sys.argv[2].encode(), keys)\n"
        "except signing.SignatureError as e:\n"
        "    print(_ed25519.backend(), e)\n"
    )
    sig = (runtime_bundle.directory / "bundle.json.sig").read_text()
    run = _run([str(runtime_venv / "python"), "-c", script, runtime_bundle.public_key, sig])
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("none cannot verify ed25519 signatures")
    assert "pip install cryptography" in run.stdout
