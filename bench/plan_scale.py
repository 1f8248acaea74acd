"""How `engine validate` and `engine plan` scale with the fleet: 1k, 10k, 100k devices.

For each size this generates a realistic operator repo under a temporary
directory (about 10 groups, 20 sites, tags, labels, inventory split over one
file per site, the example releases for three platforms), imports reports for
95 % of the devices into a fresh SQLite store, then measures:

* ``validate``: wall time of a fresh ``engine validate`` process;
* ``plan``: wall time of a fresh ``engine plan --json --out`` process (load,
  validate, read reports, diff, JSON written), its CPU time and peak RSS
  (medians of ``--repeat N`` runs);
* an in-process phase breakdown: YAML parse, the whole repo load (parse,
  validation, merge, group assignment, release catalog), reports read, diff,
  JSON write.

With 10k devices it also times ``ansible-inventory --list`` over an equivalent
Ansible inventory (hosts with their vars in YAML), with ansible-core installed
into a throwaway venv under the temporary directory, and prints the ratio.

``--shape labels`` writes another repo shape instead: 20 groups with a
release, each selecting its devices by a label (``region: r00`` .. ``r19``),
five of them narrowed further by a second label at a higher priority, and
every device carrying both labels. ``--shape block`` writes the default repo
with every device in block style (a field a line, tags as a list of ``- tag``
lines) rather than one flow mapping a line, as hand-written inventories often are.

Usage::

    .venv/bin/python bench/plan_scale.py [--sizes 1000,10000,100000] [--skip-ansible]
        [--shape default|labels] [--repeat N] [--keep]

Prints figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fleet"
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from engine.plan_io import write_plan  # noqa: E402
from engine.planner import plan_fleet  # noqa: E402
from engine.store import Store  # noqa: E402
from fleetbase.platform import Platform  # noqa: E402
from fleetbase.version import Version  # noqa: E402
from inventory._yaml import parse_yaml  # noqa: E402
from inventory.loader import load_operator_repo  # noqa: E402
from states.report import Report  # noqa: E402

SITES = [
    "berlin", "hamburg", "munich", "cologne", "frankfurt", "stuttgart", "dusseldorf",
    "leipzig", "dortmund", "essen", "bremen", "dresden", "hanover", "nuremberg",
    "duisburg", "bochum", "wuppertal", "bielefeld", "bonn", "munster",
]  # fmt: skip
PLATFORMS = ["windows", "linux", "macos"]
ROLES = {"windows": "pos", "linux": "srv", "macos": "mac"}
CUSTOMERS = ["acme", "globex", "initech", "umbrella", "hooli"]
TIERS = ["gold", "silver", "bronze"]

GROUPS_YAML = """\
groups:
  canary:
    match: {tags: internal}
    priority: 100
    agent: {release: "3.0.1"}
    rollout: {waves: [100], max_parallel: 20, soak: 10m}
  linux-prod:
    match: {platform: linux}
    agent: {release: "3.0.1"}
    rollout: {waves: [1, 5, 25, 50, 100], soak: 30m, max_parallel: 200}
    maintenance_window: {cron: "0 2 * * *", duration: 3h, timezone: Europe/Berlin}
  windows-prod:
    match: {platform: windows}
    agent: {release: "3.0.1"}
    rollout: {waves: [1, 10, 50, 100], soak: 1h, max_parallel: 500}
  macos-prod:
    match: {platform: macos}
    agent: {release: "3.0.1"}
    rollout: {waves: [5, 25, 100], soak: 30m, max_parallel: 100}
  gold-windows:
    match: {platform: windows, labels: {tier: gold}}
    priority: 10
    agent: {release: "3.0.1"}
    rollout: {waves: [2, 20, 100], max_parallel: 50}
  south:
    match: {site: [munich, stuttgart, nuremberg]}
    priority: 5
    agent: {release: "3.0.0"}
    rollout: {waves: [10, 100]}
  acme:
    match: {labels: {customer: acme}}
    description: catalogue only
  kiosks:
    match: {tags: kiosk}
    description: catalogue only
  lab:
    match: {tags: lab}
    priority: 50
    agent: {release: "3.0.1"}
  frozen:
    match: {labels: {change_freeze: "true"}}
    priority: 60
    agent: {release: "3.0.0"}
"""

REGIONS = [f"r{i:02d}" for i in range(20)]


def _labels_groups_yaml() -> str:
    """20 label-matched groups with a release; the first five narrowed by tier at priority 10."""
    lines = ["groups:\n"]
    for i, region in enumerate(REGIONS):
        waves = "[1, 10, 50, 100]" if i % 2 else "[5, 25, 100]"
        if i < 5:
            lines.append(
                f"  {region}-gold:\n"
                f"    match: {{labels: {{region: {region}, tier: gold}}}}\n"
                f"    priority: 10\n"
                f'    agent: {{release: "3.0.1"}}\n'
                f"    rollout: {{waves: [2, 20, 100], max_parallel: 50}}\n"
            )
        lines.append(
            f"  {region}:\n"
            f"    match: {{labels: {{region: {region}}}}}\n"
            f'    agent: {{release: "3.0.1"}}\n'
            f"    rollout: {{waves: {waves}, soak: 30m, max_parallel: 200}}\n"
        )
    return "".join(lines)


@dataclass
class Fleet:
    """A generated operator repo and its store."""

    size: int
    root: Path
    state_url: str
    devices: dict[str, dict[str, object]]


def _device(rng: random.Random, site: str, index: int, shape: str) -> tuple[str, dict[str, object]]:
    platform = rng.choices(PLATFORMS, weights=[6, 3, 1])[0]
    name = f"{site}-{ROLES[platform]}-{index:06d}"
    tags = ["internal"] if rng.random() < 0.002 else []
    if rng.random() < 0.1:
        tags.append("kiosk")
    if rng.random() < 0.01:
        tags.append("lab")
    labels = {"customer": rng.choice(CUSTOMERS), "tier": rng.choice(TIERS)}
    if rng.random() < 0.005:
        labels["change_freeze"] = "true"
    if shape == "labels":
        labels["region"] = rng.choice(REGIONS)
    body: dict[str, object] = {"platform": platform, "site": site, "tags": tags, "labels": labels}
    if rng.random() < 0.001:
        body["pin"] = "3.0.0"
    return name, body


def _yaml_device(name: str, body: dict[str, object]) -> str:
    tags = body["tags"]
    labels = body["labels"]
    assert isinstance(tags, list) and isinstance(labels, dict)
    label_text = ", ".join(f'{k}: "{v}"' for k, v in labels.items())
    pin = f', pin: "{body["pin"]}"' if "pin" in body else ""
    return (
        f"  {name}: {{platform: {body['platform']}, site: {body['site']}, "
        f"tags: [{', '.join(tags)}], labels: {{{label_text}}}{pin}}}\n"
    )


def _yaml_device_block(name: str, body: dict[str, object]) -> str:
    """The same device written as people often do by hand: block style, one field a line."""
    tags = body["tags"]
    labels = body["labels"]
    assert isinstance(tags, list) and isinstance(labels, dict)
    lines = [f"  {name}:\n", f"    platform: {body['platform']}\n", f"    site: {body['site']}\n"]
    if tags:
        lines.append("    tags:\n")
        lines.extend(f"      - {t}\n" for t in tags)
    lines.append("    labels:\n")
    lines.extend(f'      {k}: "{v}"\n' for k, v in labels.items())
    if "pin" in body:
        lines.append(f'    pin: "{body["pin"]}"\n')
    return "".join(lines)


def generate(size: int, base: Path, shape: str = "default") -> Fleet:
    """Write an operator repo of ``size`` devices and a store with 95 % of them reported."""
    rng = random.Random(size)
    root = base / f"fleet-{shape}-{size}"
    (root / "inventory").mkdir(parents=True)
    shutil.copytree(EXAMPLE / "releases", root / "releases")
    shutil.copytree(EXAMPLE / "artifacts", root / "artifacts")
    (root / "engine.yaml").write_text("stale_after: 30d\n")
    groups_yaml = _labels_groups_yaml() if shape == "labels" else GROUPS_YAML
    (root / "inventory" / "groups.yaml").write_text(groups_yaml)
    devices: dict[str, dict[str, object]] = {}
    write = _yaml_device_block if shape == "block" else _yaml_device
    per_site = size // len(SITES)
    for s, site in enumerate(SITES):
        count = per_site if s < len(SITES) - 1 else size - per_site * (len(SITES) - 1)
        lines = ["devices:\n"]
        for i in range(count):
            name, body = _device(rng, site, i, shape)
            devices[name] = body
            lines.append(write(name, body))
        (root / "inventory" / f"{site}.yaml").write_text("".join(lines))

    now = datetime.now(UTC)
    reports = []
    for name, body in devices.items():
        if rng.random() >= 0.95:
            continue
        version = rng.choices(["3.0.0", "3.0.1", None, "3.0.2"], weights=[80, 17, 2, 1])[0]
        seen = now - timedelta(minutes=rng.randrange(60 * 24 * 40))
        reports.append(
            Report.model_construct(
                device=name,
                agent_version=None if version is None else Version(version),
                platform=Platform(str(body["platform"])),
                last_seen=seen,
                runtime_version=None,
                known_good=None,
                last_result=None,
            )
        )
    state_url = f"sqlite:///{root / '.engine' / 'state.db'}"
    (root / ".engine").mkdir()
    with Store.open(state_url) as store:
        store.import_reports(reports)
    return Fleet(size=size, root=root, state_url=state_url, devices=devices)


def _run_child(argv: list[str], stdout_path: Path | None = None) -> tuple[float, int, int, float]:
    """Run a child; return (wall seconds, exit code, peak RSS MB, CPU seconds user+sys).

    CPU time is printed beside wall time because it is what a busy machine
    inflates least.
    """
    with tempfile.TemporaryFile() as err_file:
        out = stdout_path.open("wb") if stdout_path is not None else None
        try:
            start = time.perf_counter()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=err_file,  # a file, not a pipe: a chatty child must not block
                cwd=REPO,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            proc.returncode = code = os.waitstatus_to_exitcode(status)
        finally:
            if out is not None:
                out.close()
        if code not in (0, 2):
            err_file.seek(0)
            err = err_file.read().decode(errors="replace")
            print(f"  ! {' '.join(argv[:4])} ... exited {code}: {err[-2000:]}")
    return wall, code, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime


def phases(fleet: Fleet) -> dict[str, float]:
    """Time each phase of `engine plan` in this process (a second, warm run of the imports)."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    for path in sorted((fleet.root / "inventory").glob("*.yaml")):
        parse_yaml(path.read_bytes())
    out["yaml parse"] = time.perf_counter() - start

    start = time.perf_counter()
    repo = load_operator_repo(fleet.root)
    out["repo load (parse+validate+assign)"] = time.perf_counter() - start

    start = time.perf_counter()
    with Store.open(fleet.state_url) as store:
        reports = store.load_reports()
    out["reports read"] = time.perf_counter() - start

    gc.disable()  # as `engine plan` does while it plans and serializes
    try:
        start = time.perf_counter()
        plan = plan_fleet(repo, reports, datetime.now(UTC), stale_after=repo.settings.stale_after)
        out["diff (plan_fleet)"] = time.perf_counter() - start

        start = time.perf_counter()
        write_plan(plan, fleet.root / "phase-plan.json")
        out["JSON write"] = time.perf_counter() - start
    finally:
        gc.enable()
    return out


def _ansible_inventory(fleet: Fleet, path: Path) -> None:
    """An Ansible YAML inventory with the same hosts, vars and groups."""
    by_platform: dict[str, list[str]] = {p: [] for p in PLATFORMS}
    lines = ["all:\n", "  hosts:\n"]
    for name, body in fleet.devices.items():
        by_platform[str(body["platform"])].append(name)
        labels = body["labels"]
        assert isinstance(labels, dict)
        label_text = ", ".join(f"{k}: {v}" for k, v in labels.items())
        lines.append(
            f"    {name}: {{platform: {body['platform']}, site: {body['site']}, "
            f"tags: {body['tags']}, labels: {{{label_text}}}, agent_release: '3.0.1'}}\n"
        )
    lines.append("  children:\n")
    for platform, hosts in by_platform.items():
        lines.append(f"    {platform}_prod:\n      hosts:\n")
        lines.extend(f"        {h}:\n" for h in hosts)
    path.write_text("".join(lines))


def ansible(fleet: Fleet, base: Path) -> float | None:
    """Seconds for `ansible-inventory --list` on the equivalent inventory, or None."""
    env_dir = base / "ansible-venv"
    print("  installing ansible-core into a throwaway venv (pip) ...", flush=True)
    try:
        venv.create(env_dir, with_pip=True)
        subprocess.run(
            [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "ansible-core"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        print(f"  ansible-core could not be installed ({e}); skipping the comparison")
        if detail:
            print("  " + detail.decode(errors="replace")[-500:])
        return None
    inventory = base / "ansible-hosts.yaml"
    _ansible_inventory(fleet, inventory)
    argv = [str(env_dir / "bin" / "ansible-inventory"), "-i", str(inventory), "--list"]
    wall, rc, rss, cpu = _run_child(argv)
    if rc != 0:
        return None
    print(f"  ansible-inventory --list: {wall:.2f} s (cpu {cpu:.2f} s), peak {rss} MB")
    return wall


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--skip-ansible", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the generated repos")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run the cold plan N times and report the medians (a busy machine varies)",
    )
    parser.add_argument(
        "--shape",
        choices=["default", "labels", "block"],
        default="default",
        help="default: about 10 groups by platform, site, tag and label; "
        "labels: 20 label-matched groups; block: the default repo with each device "
        "written in block style, a field a line",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    base = Path(tempfile.mkdtemp(prefix="plan-scale-"))
    engine = [sys.executable, "-m", "engine"]
    rows = []
    ansible_ratio: str | None = None
    try:
        for size in sizes:
            print(f"== {size} devices: generating ...", flush=True)
            start = time.perf_counter()
            fleet = generate(size, base, args.shape)
            print(f"  generated in {time.perf_counter() - start:.1f} s under {fleet.root}")
            v_wall, v_rc, v_rss, v_cpu = _run_child([*engine, "validate", "-C", str(fleet.root)])
            plan_argv = [
                *engine, "plan", "-C", str(fleet.root), "--state", fleet.state_url,
                "--json", "--out", str(fleet.root / "plan.json"),
            ]  # fmt: skip
            runs = [
                _run_child(plan_argv, stdout_path=fleet.root / "plan-stdout.json")
                for _ in range(args.repeat)
            ]
            p_wall = statistics.median(r[0] for r in runs)
            p_rc = max(r[1] for r in runs)
            p_rss = max(r[2] for r in runs)
            p_cpu = statistics.median(r[3] for r in runs)
            if args.repeat > 1:
                walls = ", ".join(f"{r[0]:.2f}" for r in runs)
                cpus = ", ".join(f"{r[3]:.2f}" for r in runs)
                print(f"  {args.repeat} cold plans: wall {walls} s; cpu {cpus} s (medians below)")
            plan_mb = (fleet.root / "plan.json").stat().st_size / 1e6 if p_rc == 0 else 0.0
            breakdown = phases(fleet)
            rows.append((size, v_wall, p_wall, p_cpu, p_rss, plan_mb, breakdown))
            print(
                f"  validate {v_wall:.2f} s (cpu {v_cpu:.2f} s, rc {v_rc}, {v_rss} MB); "
                f"plan {p_wall:.2f} s (cpu {p_cpu:.2f} s, rc {p_rc}, peak {p_rss} MB, "
                f"plan {plan_mb:.1f} MB)"
            )
            for name, seconds in breakdown.items():
                print(f"    {name:<36} {seconds:7.3f} s")
            if size == 10_000 and not args.skip_ansible:
                a_wall = ansible(fleet, base)
                if a_wall is not None:
                    ansible_ratio = (
                        f"ansible-inventory --list {a_wall:.2f} s vs engine plan {p_wall:.2f} s "
                        f"at 10k devices: ansible takes {a_wall / p_wall:.1f}x as long"
                    )
        print()
        header = (
            f"{'devices':>8} {'validate s':>10} {'plan s':>8} {'cpu s':>6} {'peak MB':>8} "
            f"{'plan MB':>8} "
            f"{'yaml':>6} {'load':>6} {'reports':>8} {'diff':>6} {'json':>6}"
        )
        print(header)
        print("-" * len(header))
        for size, v_wall, p_wall, p_cpu, p_rss, plan_mb, b in rows:
            print(
                f"{size:>8} {v_wall:>10.2f} {p_wall:>8.2f} {p_cpu:>6.2f} {p_rss:>8} "
                f"{plan_mb:>8.1f} "
                f"{b['yaml parse']:>6.2f} {b['repo load (parse+validate+assign)']:>6.2f} "
                f"{b['reports read']:>8.2f} {b['diff (plan_fleet)']:>6.2f} "
                f"{b['JSON write']:>6.2f}"
            )
        print(
            "(plan s / cpu s / peak MB: a fresh `engine plan --json --out` process; "
            "yaml..json: in-process phases)"
        )
        print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print("target: 100k devices planned cold in under 3 s and 600 MB")
        if ansible_ratio:
            print(ansible_ratio)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
