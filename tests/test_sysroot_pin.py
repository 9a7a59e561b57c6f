"""scripts/fetch-wasix-sysroot takes only the pinned wasix-libc: another .deb is refused with
its checksum, a pin that sid no longer has says how to update, a matching sysroot is kept."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "fetch-wasix-sysroot"


def fetch(tmp_path: Path, *args: str, script: Path = SCRIPT, **env: str
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                            "WASIX_SYSROOT": str(tmp_path / "sysroot"), **env})


def pinned() -> tuple[str, str]:
    text = SCRIPT.read_text()
    version = re.search(r'^WASIX_LIBC_VERSION="([^"]+)"', text, re.M)
    sha = re.search(r'^WASIX_LIBC_SHA256="([0-9a-f]{64})"', text, re.M)
    assert version and sha, "the script must pin a version and a SHA-256"
    return version.group(1), sha.group(1)


def test_a_deb_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    version, sha = pinned()
    fake = tmp_path / "wasix-libc_fake.deb"
    fake.write_bytes(b"!<arch>\nnot the pinned package\n")
    proc = fetch(tmp_path, WASIX_LIBC_DEB=str(fake))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"fetch-wasix-sysroot: error: {fake.name}: SHA-256 ")
    assert f"but the pinned wasix-libc {version} has {sha}; refusing it" in proc.stderr
    assert not (tmp_path / "sysroot").exists()


def test_a_sysroot_of_another_version_is_fetched_again(tmp_path: Path) -> None:
    (tmp_path / "sysroot").mkdir()
    (tmp_path / "sysroot" / ".wasmgroup-sysroot-ok").write_text("wasix-libc_0.1_amd64.deb\n")
    proc = fetch(tmp_path, WASIX_LIBC_DEB=str(tmp_path / "missing.deb"))
    assert proc.returncode == 1 and "WASIX_LIBC_DEB=" in proc.stderr  # it did not stop early
    version, _ = pinned()
    (tmp_path / "sysroot" / ".wasmgroup-sysroot-ok").write_text(
        f"wasix-libc_{version}_amd64.deb\n")
    assert fetch(tmp_path, WASIX_LIBC_DEB=str(tmp_path / "missing.deb")).returncode == 0


def test_usage(tmp_path: Path) -> None:
    assert "--latest" in fetch(tmp_path, "--help").stdout
    bad = fetch(tmp_path, "--bogus")
    assert bad.returncode == 1
    assert bad.stderr == "fetch-wasix-sysroot: error: unknown argument: --bogus (try --help)\n"


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt")
def test_a_pin_that_sid_dropped_says_how_to_update(tmp_path: Path) -> None:
    """A copy of the script pinned to a version Debian never had (needs the Debian mirror)."""
    copy = tmp_path / "repo" / "scripts" / "fetch-wasix-sysroot"
    copy.parent.mkdir(parents=True)
    copy.write_text(re.sub(r'^WASIX_LIBC_VERSION="[^"]+"', 'WASIX_LIBC_VERSION="0.0.1-gone"',
                           SCRIPT.read_text(), flags=re.M))
    proc = fetch(tmp_path, script=copy)
    if "could not find a Debian archive" in proc.stderr or "command failed" in proc.stderr:
        pytest.skip("no Debian mirror reachable")
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("fetch-wasix-sysroot: error: the pinned wasix-libc 0.0.1-gone is no "
                           "longer in Debian sid (available: ")
    assert line.endswith("To update the pin: run scripts/fetch-wasix-sysroot --latest, put the "
                         "version and SHA-256 it prints at the top of scripts/fetch-wasix-sysroot, "
                         "then run scripts/test.")
    assert pinned()[0] in line  # the real pin is still available there
