"""The loader against hostile operator files: sandboxed templates, alias bombs, no leak."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from inventory.errors import InventoryError
from inventory.loader import load_operator_repo
from tests.inventory.conftest import RepoMaker

#: 300 bytes that expand to 9^9 (387 million) values when aliases are followed.
ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
    "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
    "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
    "h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
    "devices: [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n"
)


#: The child's own peak RSS in KiB. Not ``getrusage``'s ``ru_maxrss``: Linux carries the
#: peak of the process that forked it (pytest, hundreds of MB late in the suite) across
#: exec; ``VmHWM`` belongs to the memory the child got at exec.
PEAK_RSS_KIB = "peak_rss_kib"
PEAK_RSS_SOURCE = textwrap.dedent(
    """
    def peak_rss_kib():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmHWM in /proc/self/status")
    """
)


def _max_rss_of_load(root: Path, extra: str = "") -> tuple[int, str]:
    """Peak RSS (KiB) of a fresh process that loads ``root``, and what it printed."""
    code = PEAK_RSS_SOURCE + textwrap.dedent(
        f"""
        import sys
        from inventory.errors import InventoryError
        from inventory.loader import load_operator_repo
        try:
            load_operator_repo(sys.argv[1])
            print("loaded")
        except InventoryError as e:
            print(e)
        {extra}
        print("rss", {PEAK_RSS_KIB}())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    rss = int(out.rsplit("rss ", 1)[1])
    return rss, out


def test_template_cannot_reach_python_internals(make_repo: RepoMaker) -> None:
    """A .yaml.j2 template walking to os.system is refused by the sandbox, not run."""
    marker = make_repo().parent / "pwned"
    template = (
        "{% set os = ''.__class__.__mro__[1].__subclasses__() %}"
        f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}\n"
        "devices: {}\n"
    )
    root = make_repo({"inventory/gen.yaml.j2": template})
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    assert not marker.exists()
    assert "inventory/gen.yaml.j2" in str(info.value)
    assert "unsafe" in str(info.value)


def test_sandboxed_template_still_renders_loops(make_repo: RepoMaker) -> None:
    """Ordinary template logic (loops, filters) works in the sandbox."""
    template = (
        "devices:\n{% for i in range(3) %}  gen-{{ '%04d' | format(i) }}: {platform: linux}\n"
        "{% endfor %}"
    )
    repo = load_operator_repo(make_repo({"inventory/gen.yaml.j2": template}))
    assert {"gen-0000", "gen-0001", "gen-0002"} <= set(repo.inventory.devices)


def test_alias_bomb_is_a_clear_error_in_bounded_memory(make_repo: RepoMaker) -> None:
    """A 300-byte alias bomb fails with an InventoryError naming the file, using < 200 MB."""
    assert len(ALIAS_BOMB) <= 400
    root = make_repo({"inventory/bomb.yaml": ALIAS_BOMB})
    rss_kib, out = _max_rss_of_load(root)
    assert "inventory/bomb.yaml" in out
    assert "alias bomb" in out
    assert rss_kib < 200 * 1024, f"peak RSS {rss_kib} KiB"


def test_recursive_alias_is_a_clear_error(make_repo: RepoMaker) -> None:
    """An alias inside its own anchor is refused with the file named, not an exception."""
    root = make_repo({"inventory/loop.yaml": "devices: &d {x: *d}\n"})
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    assert "inventory/loop.yaml" in str(info.value)


def test_ordinary_anchors_and_merges_still_load(make_repo: RepoMaker) -> None:
    """Anchors that share a few values (defaults merged into devices) load as before."""
    text = "x-linux: &linux {platform: linux, site: berlin}\ndevices:\n" + "".join(
        f"  srv-{i:04d}:\n    <<: *linux\n" for i in range(200)
    )
    root = make_repo({"inventory/more.yaml": text})
    with pytest.raises(InventoryError) as info:  # x-linux is an unknown top-level key
        load_operator_repo(root)
    assert "alias bomb" not in str(info.value)
    assert "x-linux" in str(info.value)


def test_inventory_reloads_do_not_leak(tmp_path: Path) -> None:
    """50 more loads of a 5,000-device repo, after 10 that reach the steady state, grow peak
    RSS by < 10 MB (rapidyaml's emitted JSON leaked on each: about 28 MB over these 50)."""
    root = tmp_path / "fleet"
    (root / "inventory").mkdir(parents=True)
    (root / "releases").mkdir()
    (root / "inventory" / "devices.yaml").write_text(
        "devices:\n"
        + "".join(
            f"  dev-{i:05d}: {{platform: linux, site: site-{i % 50}, tags: [t{i % 7}], "
            f"labels: {{customer: c{i % 13}, rack: r{i % 31}}}}}\n"
            for i in range(5000)
        )
    )
    code = PEAK_RSS_SOURCE + textwrap.dedent(
        """
        import sys
        from inventory.loader import load_operator_repo

        peak = peak_rss_kib

        for _ in range(10):
            load_operator_repo(sys.argv[1])
        steady = peak()
        for _ in range(50):
            load_operator_repo(sys.argv[1])
        print(peak() - steady)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(root)],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    ).stdout
    growth_kib = int(out.strip())
    assert growth_kib < 10 * 1024, f"peak RSS grew {growth_kib} KiB over 50 reloads"
