"""Managed config and flags in the operator repo: validation, rendering, secrets, the plan."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.cli import main
from engine.config_digests import config_renderer, with_diffs
from engine.config_render import ConfigRenderer, ConfigRenderError
from engine.planner import plan_fleet
from engine.secrets_file import MASK, Secrets, SecretsError, load_secrets
from fleetbase.version import Version
from inventory.errors import InventoryError
from inventory.loader import load_operator_repo
from states.config_bundle import config_digest
from states.plan import Action
from states.report import Report
from tests.inventory.conftest import RepoMaker, manifest_text

SECRET = "hunter2-very-secret"
DIGEST_KEY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
CONFIG = (
    "config:\n"
    "  - {path: agent.json, template: templates/agent.json.j2, mode: '0640', secrets: [token]}\n"
    "flags:\n"
    "  verbose: {type: bool, default: false}\n"
    "  level: {type: int, default: 3, since: '3.0.1'}\n"
)
TEMPLATE = (
    '{"site": {{ vars.site | tojson }}, "token": {{ secrets.token | tojson }}, '
    '"verbose": {{ flags.verbose | tojson }}}\n'
)
INVENTORY = """\
devices:
  a: {platform: linux, vars: {site: own}}
  b: {platform: linux}
groups:
  prod:
    members: [a, b]
    agent: {release: '3.0.1'}
    vars: {site: shared}
    flags: {verbose: true}
"""


def _repo(make_repo: RepoMaker, inventory: str = INVENTORY) -> Path:
    root = make_repo(
        {
            "inventory/devices.yaml": None,
            "inventory/groups.yaml": None,
            "inventory/fleet.yaml": inventory,
            "releases/3.0.1.yaml": manifest_text("3.0.1", 1, extra=CONFIG),
            "releases/3.0.2.yaml": None,
            "templates/agent.json.j2": TEMPLATE,
            "engine.yaml": "secrets_file: secrets.yaml\n",
            "secrets.yaml": f"digest_key: {DIGEST_KEY}\ntoken: {SECRET}\n"
            f"devices:\n  b: {{token: other-{SECRET}}}\n",
        }
    )
    os.chmod(root / "secrets.yaml", 0o600)
    return root


def _problems(root: Path) -> list[str]:
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    return [str(p) for p in info.value.problems]


def test_unknown_flag_is_refused_with_file_and_line(make_repo: RepoMaker) -> None:
    """A flag the release does not declare points at its key, and names the known ones."""
    root = _repo(make_repo, INVENTORY.replace("flags: {verbose: true}", "flags: {verbos: true}"))
    assert _problems(root) == [
        "inventory/fleet.yaml:9:13: groups.prod.flags.verbos: flag 'verbos' is unknown to "
        "release 3.0.1 (its flags: level, verbose)"
    ]


def test_flag_of_the_wrong_type_on_a_device_is_refused(make_repo: RepoMaker) -> None:
    """A device's own flag is checked against the release it runs, its type included."""
    text = INVENTORY.replace("b: {platform: linux}", "b: {platform: linux, flags: {level: 'x'}}")
    assert _problems(_repo(make_repo, text)) == [
        "inventory/fleet.yaml:3:32: devices.b.flags.level: flag 'level': value 'x' is a string, "
        "the flag is an int"
    ]


def test_missing_template_is_refused_at_the_release(make_repo: RepoMaker) -> None:
    """A release naming a template the repo lacks fails validation at that key."""
    root = _repo(make_repo)
    (root / "templates" / "agent.json.j2").unlink()
    [problem] = _problems(root)
    assert problem.startswith("releases/3.0.1.yaml:")
    assert "template 'templates/agent.json.j2' does not exist" in problem


def test_rendering_uses_device_over_group_vars_flags_and_masks_secrets(
    make_repo: RepoMaker,
) -> None:
    """The device's own vars win; the real file holds the secret, the masked one never."""
    root = _repo(make_repo)
    repo = load_operator_repo(root)
    renderer = ConfigRenderer(repo, load_secrets(root, "secrets.yaml"))
    a = renderer.render("a", Version("3.0.1"))
    b = renderer.render("b", Version("3.0.1"))
    assert a is not None and b is not None
    assert a.bundle.files[0].content == (
        f'{{"site": "own", "token": "{SECRET}", "verbose": true}}\n'
    )
    assert a.masked["agent.json"] == f'{{"site": "own", "token": "{MASK}", "verbose": true}}\n'
    assert SECRET not in b.masked["agent.json"] and f"other-{SECRET}" in b.bundle.files[0].content
    assert a.bundle.flags == {"level": 3, "verbose": True}
    assert a.bundle.computed_digest() == a.digest != b.digest
    again = ConfigRenderer(repo, load_secrets(root, "secrets.yaml")).render("a", Version("3.0.1"))
    assert again is not None and again.digest == a.digest


def test_secrets_file_must_be_private_and_define_what_templates_need(
    make_repo: RepoMaker,
) -> None:
    """A group-readable secrets file is refused; a missing secret names the file and device."""
    root = _repo(make_repo)
    os.chmod(root / "secrets.yaml", 0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        load_secrets(root, "secrets.yaml")
    renderer = ConfigRenderer(load_operator_repo(root), Secrets())
    with pytest.raises(ConfigRenderError, match=r"device a: agent\.json needs secret"):
        renderer.render("a", Version("3.0.1"))


def test_template_error_names_the_template_and_line(make_repo: RepoMaker) -> None:
    """An undefined variable fails with the device, template and line."""
    root = _repo(make_repo)
    (root / "templates" / "agent.json.j2").write_text("{}\n{{ vars.nope }}\n")
    renderer = ConfigRenderer(load_operator_repo(root), load_secrets(root, "secrets.yaml"))
    with pytest.raises(ConfigRenderError, match=r"device a: templates/agent.json.j2:2: Jinja2"):
        renderer.render("a", Version("3.0.1"))


def test_plan_reconfigures_devices_whose_digest_differs_and_shows_a_masked_diff(
    make_repo: RepoMaker,
) -> None:
    """On the release with another digest: reconfigure in a rollout named by the digests; the
    same digest: noop; the diff shows the change, never the secret."""
    root = _repo(make_repo)
    repo = load_operator_repo(root)
    renderer = config_renderer(repo)
    assert renderer is not None
    now = datetime(2026, 12, 1, tzinfo=UTC)
    digest_b = renderer.digest("b", Version("3.0.1"))
    reports = {
        "a": Report(device="a", agent_version=Version("3.0.1"), last_seen=now,
                    runtime_version="1", config_digest="sha256:old"),
        "b": Report(device="b", agent_version=Version("3.0.1"), last_seen=now,
                    runtime_version="1", config_digest=digest_b),
    }  # fmt: skip
    plan = plan_fleet(repo, reports, now, stale_after=timedelta(days=1), configs=renderer.digest)
    by = {d.device: d for d in plan.devices}
    assert by["a"].action is Action.RECONFIGURE and by["b"].action is Action.NOOP
    assert by["a"].reason.startswith("config old -> ")
    assert [s.name.value for s in by["a"].steps][:2] == ["download", "verify"]
    [rollout] = plan.rollouts
    assert rollout.id.startswith("prod@3.0.1+cfg") and len(rollout.id) == len("prod@3.0.1+cfg") + 8
    assert plan.summary["reconfigure"] == 1
    shown = with_diffs(plan, renderer, reports)
    diff = {d.device: d.config_diff for d in shown.devices}["a"]
    assert diff is not None and "+++ b/agent.json" in diff["agent.json"]
    assert SECRET not in shown.model_dump_json() and MASK in diff["agent.json"]
    assert SECRET not in "".join(p.read_text() for p in (root / ".engine").rglob("*.json"))


# -- the published digest and guesses of a secret ------------------------------------------


def _attacker_digests(
    root: Path, device_vars: dict[str, object], guesses: list[str]
) -> dict[str, str]:
    """What anyone holding the plan and the operator repo (not the secrets file) computes: the
    unkeyed digest of the device's rendering under each guessed secret, by guess."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = env.from_string((root / "templates" / "agent.json.j2").read_text())
    flags = {"level": 3, "verbose": True}
    out: dict[str, str] = {}
    for guess in guesses:
        text = template.render(vars=device_vars, flags=flags, secrets={"token": guess})
        sha = hashlib.sha256(text.encode()).hexdigest()
        out[config_digest([("agent.json", 0o640, sha)], flags)] = guess
    return out


def test_the_published_digest_cannot_be_checked_against_guesses_of_a_short_secret(
    make_repo: RepoMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """A four-digit secret: an attacker with the plan JSON and the repo renders the template
    with all 10,000 guesses. One of them reproduces the device's file exactly (the guesses
    cover the secret, and an unkeyed digest would give it away), yet none yields the digest
    the plan publishes: it is keyed by the secrets file's digest_key."""
    root = _repo(make_repo)
    (root / "secrets.yaml").write_text(f"digest_key: {DIGEST_KEY}\ntoken: '4821'\n")
    assert main(["plan", "-C", str(root), "--json"]) == 0
    devices = json.loads(capsys.readouterr().out)["devices"]
    published = {d["device"]: d["config_digest"] for d in devices}
    assert published["a"] is not None and published["a"].startswith("sha256:")
    guesses = _attacker_digests(root, {"site": "own"}, [f"{n:04d}" for n in range(10_000)])
    assert published["a"] not in guesses
    # the attack is real: the same guesses find the secret in an unkeyed digest
    renderer = ConfigRenderer(load_operator_repo(root), load_secrets(root, "secrets.yaml"))
    rendered = renderer.render("a", Version("3.0.1"))
    assert rendered is not None and rendered.digest == published["a"]
    [file] = rendered.bundle.files
    unkeyed = config_digest([(file.path, file.mode, file.sha256)], rendered.bundle.flags)
    assert guesses.get(unkeyed) == "4821"
    assert file.mac is not None and rendered.bundle.computed_digest() == published["a"]


def test_a_changed_secret_or_digest_key_still_reconfigures(make_repo: RepoMaker) -> None:
    """Device a reports the digest it runs; the secret changes: its digest changes and the
    plan reconfigures it. Another digest_key also renames every file with secrets; a release
    whose files hold no secret needs no key, and its digest is the plain one."""
    root = _repo(make_repo)
    secrets = root / "secrets.yaml"
    secrets.write_text(f"digest_key: {DIGEST_KEY}\ntoken: '4821'\n")
    repo = load_operator_repo(root)
    now = datetime(2026, 12, 1, tzinfo=UTC)

    def plan_for(reported: str | None) -> Action:
        renderer = config_renderer(repo)
        assert renderer is not None
        reports = {"a": Report(device="a", agent_version=Version("3.0.1"), last_seen=now,
                               runtime_version="1", config_digest=reported)}  # fmt: skip
        plan = plan_fleet(repo, reports, now, stale_after=timedelta(days=1),
                          configs=renderer.digest)  # fmt: skip
        return next(d for d in plan.devices if d.device == "a").action

    def digest() -> str:
        renderer = config_renderer(repo)
        assert renderer is not None
        found = renderer.digest("a", Version("3.0.1"))
        assert found is not None
        return found

    running = digest()
    assert plan_for(running) is Action.NOOP
    secrets.write_text(f"digest_key: {DIGEST_KEY}\ntoken: '4822'\n")
    assert digest() != running and plan_for(running) is Action.RECONFIGURE
    secrets.write_text(f"digest_key: {DIGEST_KEY[::-1]}\ntoken: '4821'\n")
    assert digest() != running and plan_for(running) is Action.RECONFIGURE
    # no secrets in the file: no key needed, the digest is the plain sha256 one
    (root / "releases" / "3.0.1.yaml").write_text(
        manifest_text("3.0.1", 1, extra=CONFIG.replace(", secrets: [token]", ""))
    )
    (root / "templates" / "agent.json.j2").write_text("{}\n")
    secrets.write_text("token: unused\n")
    repo = load_operator_repo(root)
    renderer = ConfigRenderer(repo, load_secrets(root, "secrets.yaml"))
    rendered = renderer.render("a", Version("3.0.1"))
    assert rendered is not None and rendered.bundle.files[0].mac is None
    sha = hashlib.sha256(b"{}\n").hexdigest()
    assert rendered.digest == config_digest(
        [("agent.json", 0o640, sha)], {"level": 3, "verbose": True}
    )


def test_digest_key_mistakes_are_clear_errors(make_repo: RepoMaker) -> None:
    """No key for a file with secrets names the device, file and what to add; a short key, a
    per-device key and a template asking for the key as a secret are refused."""
    root = _repo(make_repo)
    secrets = root / "secrets.yaml"
    secrets.write_text(f"token: {SECRET}\n")
    renderer = ConfigRenderer(load_operator_repo(root), load_secrets(root, "secrets.yaml"))
    with pytest.raises(
        ConfigRenderError, match=r"device a: agent\.json holds secrets.*add `digest_key: "
    ):
        renderer.render("a", Version("3.0.1"))
    secrets.write_text(f"digest_key: short\ntoken: {SECRET}\n")
    with pytest.raises(SecretsError, match=r"digest_key: use text of 32 or more random"):
        load_secrets(root, "secrets.yaml")
    secrets.write_text(f"token: {SECRET}\ndevices:\n  a: {{digest_key: {DIGEST_KEY}}}\n")
    with pytest.raises(SecretsError, match=r"devices\.a\.digest_key: the digest key is one"):
        load_secrets(root, "secrets.yaml")
    secrets.write_text(f"digest_key: {DIGEST_KEY}\ntoken: {SECRET}\n")
    loaded = load_secrets(root, "secrets.yaml")
    assert "digest_key" not in loaded.for_device("a") and DIGEST_KEY not in loaded.values()
    assert DIGEST_KEY not in repr(loaded)
