"""Finding libraries in the guest's filesystem view (reference §2.5, §9.2): pure, on tmp dirs."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from wasmgroup.orchestrator.locate import GuestFilesystem, Located, locate
from wasmgroup.shared import guestfs
from wasmgroup.shared.errors import LinkError, ModuleNotFound


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00asm\x01\x00\x00\x00")
    return path


def find(fs: GuestFilesystem, lib_name: str, *, ld: list[str] | None = None,
         runpath: list[str] | None = None, origin: str | None = None) -> Located:
    return locate(fs, lib_name, ld_library_path=ld or [], runtime_path=runpath or [],
                  origin=origin)


def not_found(fs: GuestFilesystem, lib_name: str, **kw: object) -> ModuleNotFound:
    with pytest.raises(ModuleNotFound) as info:
        find(fs, lib_name, **kw)  # type: ignore[arg-type]
    return info.value


@pytest.fixture(params=["openat2", "walk"], autouse=True)
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test runs with openat2 and with the O_NOFOLLOW walk used where it is missing."""
    monkeypatch.setattr(guestfs, "use_openat2", request.param == "openat2")
    yield request.param
    if request.param == "openat2":
        # This machine has openat2: the test really went through it, not the fallback.
        assert guestfs.use_openat2


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """Resolved: the locator reports host paths with symlinks resolved."""
    return tmp_path.resolve()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def fs_at(root: Path, cwd: str = "/app", lib_paths: tuple[str, ...] = ()) -> GuestFilesystem:
    return GuestFilesystem.from_specs([f"{root}::/"], lib_paths=lib_paths, cwd=cwd)


def test_absolute_path_is_exactly_that_path(root: Path) -> None:
    host = touch(root / "opt" / "libx.so")
    touch(root / "lib" / "libx.so")
    found = find(fs_at(root), "/opt/libx.so")
    assert found == Located("/opt/libx.so", str(host))
    err = not_found(fs_at(root), "/nowhere/libx.so")
    assert err.tried == ["/nowhere/libx.so", "/nowhere/libx.wasm"]


def test_path_with_slash_is_relative_to_cwd(root: Path) -> None:
    touch(root / "app" / "sub" / "liby.so")
    touch(root / "lib" / "libz.so")
    fs = fs_at(root, cwd="/app")
    assert find(fs, "sub/liby.so").guest_path == "/app/sub/liby.so"
    assert find(fs, "./sub/liby.so").guest_path == "/app/sub/liby.so"
    assert find(fs, "../lib/libz.so").guest_path == "/lib/libz.so"
    # RUNPATH and library directories play no part.
    err = not_found(fs, "./libz.so", ld=["/lib"], runpath=["/lib"])
    assert err.tried == ["/app/libz.so", "/app/libz.wasm"]


def test_bare_name_never_searches_cwd(root: Path) -> None:
    touch(root / "app" / "libc.so")
    err = not_found(fs_at(root, cwd="/app"), "libc.so")
    assert not any(path.startswith("/app/") for path in err.tried)


def test_search_order(root: Path, tmp_path: Path) -> None:
    host_lib = tmp_path / "hostlib"
    places = {
        "/ld": root / "ld" / "libo.so",
        "/rp": root / "rp" / "libo.so",
        "/lib": root / "lib" / "libo.so",
        "/usr/lib": root / "usr" / "lib" / "libo.so",
        "/usr/local/lib": root / "usr" / "local" / "lib" / "libo.so",
    }
    for path in places.values():
        touch(path)
    touch(host_lib / "libo.so")
    fs = fs_at(root, lib_paths=(str(host_lib),))
    for guest_dir, host in places.items():
        found = find(fs, "libo.so", ld=["/ld"], runpath=["/rp"], origin="/app")
        assert found == Located(f"{guest_dir}/libo.so", str(host))
        host.unlink()
    # Last come the host --lib-path directories; the module appears at the guest's root.
    found = find(fs, "libo.so", ld=["/ld"], runpath=["/rp"], origin="/app")
    assert found == Located("/libo.so", str(host_lib / "libo.so"))


def test_ld_library_path_entries_in_order(root: Path) -> None:
    touch(root / "b" / "libq.so")
    touch(root / "a" / "libq.so")
    fs = fs_at(root)
    assert find(fs, "libq.so", ld=["/a", "/b"]).guest_path == "/a/libq.so"
    assert find(fs, "libq.so", ld=["/b", "/a"]).guest_path == "/b/libq.so"


@pytest.mark.parametrize("token", ["$ORIGIN", "${ORIGIN}"])
def test_origin_is_the_requesting_modules_directory(root: Path, token: str) -> None:
    touch(root / "app" / "plugins" / "deps" / "libd.so")
    fs = fs_at(root)
    found = find(fs, "libd.so", runpath=[f"{token}/deps"], origin="/app/plugins")
    assert found.guest_path == "/app/plugins/deps/libd.so"
    found = find(fs, "libd.so", runpath=[f"{token}/../plugins/deps"], origin="/app/plugins")
    assert found.guest_path == "/app/plugins/deps/libd.so"


def test_origin_at_guest_root(tmp_path: Path) -> None:
    deps = tmp_path / "deps"
    host = touch(deps / "libd.so")
    fs = GuestFilesystem.from_specs([f"{deps}::/deps"])
    found = find(fs, "libd.so", runpath=["$ORIGIN/deps"], origin="/")
    assert found == Located("/deps/libd.so", str(host))


def test_so_falls_back_to_wasm_at_every_candidate(root: Path, tmp_path: Path) -> None:
    touch(root / "ld" / "libw.wasm")
    touch(root / "lib" / "libw.so")
    fs = fs_at(root)
    # The .wasm in the first directory beats the .so in a later one.
    assert find(fs, "libw.so", ld=["/ld"]).guest_path == "/ld/libw.wasm"
    assert find(fs, "libw.so").guest_path == "/lib/libw.so"
    touch(root / "rp" / "libr.wasm")
    assert find(fs, "libr.so", runpath=["/rp"]).guest_path == "/rp/libr.wasm"
    touch(root / "usr" / "local" / "lib" / "libu.wasm")
    assert find(fs, "libu.so").guest_path == "/usr/local/lib/libu.wasm"
    touch(root / "app" / "liba.wasm")
    assert find(fs, "./liba.so").guest_path == "/app/liba.wasm"
    assert find(fs, "/app/liba.so").guest_path == "/app/liba.wasm"
    host_lib = tmp_path / "hostlib"
    touch(host_lib / "libh.wasm")
    fs = fs_at(root, lib_paths=(str(host_lib),))
    assert find(fs, "libh.so") == Located("/libh.wasm", str(host_lib / "libh.wasm"))
    # Only a .so name falls back.
    touch(root / "lib" / "libv.so.1.wasm")
    assert not_found(fs, "libv.so.1").tried[:2] == ["/lib/libv.so.1", "/usr/lib/libv.so.1"]


def test_not_found_lists_every_path_tried(root: Path) -> None:
    err = not_found(fs_at(root), "libn.so", ld=["/ld", "rel"], runpath=["$ORIGIN/rp"],
                    origin="/app/bin")
    assert err.tried == [
        "/ld/libn.so", "/ld/libn.wasm",
        "/app/rel/libn.so", "/app/rel/libn.wasm",  # a relative entry is against the cwd
        "/app/bin/rp/libn.so", "/app/bin/rp/libn.wasm",
        "/lib/libn.so", "/lib/libn.wasm",
        "/usr/lib/libn.so", "/usr/lib/libn.wasm",
        "/usr/local/lib/libn.so", "/usr/local/lib/libn.wasm",
    ]
    message = str(err)
    assert "'libn.so'" in message
    assert all(path in message for path in err.tried)
    assert isinstance(err, LinkError)


def test_cannot_escape_the_mapping_with_dotdot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    touch(tmp_path / "secret.so")
    touch(data / "inside.so")
    fs = GuestFilesystem.from_specs([f"{data}::/data"], cwd="/data")
    assert find(fs, "/data/inside.so").guest_path == "/data/inside.so"
    for request in ("/data/../secret.so", "../secret.so", "../../../secret.so",
                    "/data/../../secret.so"):
        err = not_found(fs, request)
        assert err.tried == ["/secret.so", "/secret.wasm"]
    assert fs.open_library("/secret.so") is None


def test_symlink_out_of_the_mapping_is_not_found(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = touch(tmp_path / "outside" / "secret.so")
    inside = touch(root / "lib" / "real.so")
    os.symlink(outside, root / "lib" / "evil.so")
    os.symlink(outside.parent, root / "lib" / "evildir")
    os.symlink(inside, root / "lib" / "alias.so")
    fs = GuestFilesystem.from_specs([f"{root}::/"])
    not_found(fs, "evil.so")
    not_found(fs, "/lib/evildir/secret.so")
    # A symlink that stays inside is followed.
    assert find(fs, "alias.so") == Located("/lib/alias.so", str(inside))


def test_mapping_at_dot_is_root(root: Path) -> None:
    host = touch(root / "lib" / "libdot.so")
    fs = GuestFilesystem.from_specs([f"{root}::."])
    assert fs.mappings[0].guest == "/" and fs.cwd == "/"
    assert find(fs, "libdot.so") == Located("/lib/libdot.so", str(host))
    assert find(fs, "lib/libdot.so").guest_path == "/lib/libdot.so"


def test_longest_prefix_mapping_wins(tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    touch(outer / "lib" / "libp.so")
    touch(outer / "lib" / "libshadowed.so")
    mounted = touch(inner / "libp.so")
    for specs in ([f"{outer}::/", f"{inner}::/lib"], [f"{inner}::/lib", f"{outer}::/"]):
        fs = GuestFilesystem.from_specs(specs)
        assert find(fs, "libp.so") == Located("/lib/libp.so", str(mounted))
        # The mount hides what lies beneath it.
        assert fs.open_library("/lib/libshadowed.so") is None
    # A mapping at /li is no prefix of /lib/...
    fs = GuestFilesystem.from_specs([f"{outer}::/", f"{inner}::/li"])
    assert find(fs, "libp.so").host_path == str(outer / "lib" / "libp.so")


def test_from_specs_rejects_a_non_directory(tmp_path: Path) -> None:
    a_file = touch(tmp_path / "file.so")
    with pytest.raises(LinkError, match=re.escape("file.so")):
        GuestFilesystem.from_specs([f"{a_file}::/"])
    with pytest.raises(LinkError, match="missing"):
        GuestFilesystem.from_specs([f"{tmp_path / 'missing'}::/"])
    with pytest.raises(LinkError, match=re.escape("file.so")):
        GuestFilesystem.from_specs([f"{tmp_path}::/"], lib_paths=[str(a_file)])


def test_plain_dir_spec_is_seen_under_its_own_name(tmp_path: Path) -> None:
    host = touch(tmp_path / "same" / "libs.so")
    fs = GuestFilesystem.from_specs([str(tmp_path / "same")])
    assert find(fs, f"{tmp_path}/same/libs.so").host_path == str(host)


def test_empty_name_is_not_found(root: Path) -> None:
    assert not_found(fs_at(root), "").tried == []


def read_found(found: Located) -> bytes:
    with found:
        return os.pread(found.fd, 100, 0)


def test_symlinks_are_followed_only_while_they_stay_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    inside = touch(root / "real" / "libin.so")
    touch(tmp_path / "outside" / "libout.so")
    links = {
        "abs_in.so": inside,  # absolute host path into the mapping
        "rel_in.so": Path("../real/libin.so"),
        "chain.so": Path("rel_in.so"),
        "abs_out.so": tmp_path / "outside" / "libout.so",
        "rel_out.so": Path("../../outside/libout.so"),
        "loop.so": Path("loop.so"),
        "proc.so": Path("/proc/self/root") / inside.relative_to("/"),  # a magic link
    }
    (root / "lib").mkdir()
    for name, target in links.items():
        os.symlink(target, root / "lib" / name)
    os.symlink(root, root / "lib" / "self")  # absolute, to the mapping's own root
    fs = GuestFilesystem.from_specs([f"{root}::/"])
    for name in ("abs_in.so", "rel_in.so", "chain.so", "self/real/libin.so"):
        assert find(fs, f"/lib/{name}").host_path == str(inside), name
    for name in ("abs_out.so", "rel_out.so", "loop.so", "proc.so"):
        not_found(fs, f"/lib/{name}")
    fs.close()


def test_reads_come_from_the_descriptor_the_lookup_opened(tmp_path: Path) -> None:
    """Swapping a directory for a symlink out of the mapping after the lookup changes
    nothing (the file is never opened again); before the lookup, it finds nothing."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "lib.so").write_bytes(b"inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "lib.so").write_bytes(b"OUTSIDE")
    os.symlink(outside, root / "out")
    fs = GuestFilesystem.from_specs([f"{root}::/m"])
    found = find(fs, "/m/d/lib.so")
    os.rename(root / "d", root / "d.real")
    os.rename(root / "out", root / "d")
    assert read_found(found) == b"inside"
    not_found(fs, "/m/d/lib.so")
    assert not fs.is_directory("/m/d")
    with pytest.raises(OSError):
        fs.open("/m/d/lib.so")
    fs.close()


def test_open_stat_and_is_directory_resolve_like_the_locator(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "f.txt").write_bytes(b"hello")
    os.symlink("sub", root / "alias")
    os.symlink(tmp_path, root / "escape")
    fs = GuestFilesystem.from_specs([f"{root}::/data"], cwd="/data")
    fd = fs.open("alias/f.txt")
    assert os.read(fd, 5) == b"hello"
    os.close(fd)
    assert fs.stat("/data/alias/f.txt").st_size == 5
    for visible in ("/", "/data", "/data/sub", "alias", "alias/deeper", "/data/sub/../alias"):
        assert fs.is_directory(visible), visible
    for hidden in ("/data/escape", "/data/sub/f.txt", "/data/none", "/other", "/data/a\0b"):
        assert not fs.is_directory(hidden), hidden
    for path, code in (("/data/escape/root", errno.EXDEV), ("/other/x", errno.ENOENT),
                       ("/data/sub/\0", errno.EINVAL)):
        with pytest.raises(OSError) as info:
            fs.open(path)
        assert info.value.errno == code, path
    fs.close()


def test_a_fifo_or_directory_is_no_library_and_never_blocks(root: Path) -> None:
    (root / "lib").mkdir()
    os.mkfifo(root / "lib" / "libfifo.so")  # opening it for reading would wait for a writer
    (root / "lib" / "libdir.so").mkdir()
    fs = fs_at(root)
    not_found(fs, "libfifo.so")
    not_found(fs, "libdir.so")
    fs.close()


def test_nul_bytes_find_nothing(root: Path) -> None:
    touch(root / "lib" / "libn.so")
    fs = fs_at(root)
    with pytest.raises(LinkError, match="cannot contain a NUL byte"):
        find(fs, "lib\0n.so")
    err = not_found(fs, "libnul.so", ld=["/li\0b"])
    assert err.tried[0] == "/li\\0b/libnul.so"
    assert "\0" not in str(err)
    fs.close()


def test_lib_path_directories_hold_their_symlinks_in(tmp_path: Path) -> None:
    host_lib = tmp_path / "hostlib"
    touch(tmp_path / "secret" / "libs.so")
    touch(host_lib / "libok.so")
    os.symlink(tmp_path / "secret" / "libs.so", host_lib / "libs.so")
    fs = GuestFilesystem.from_specs([], lib_paths=[str(host_lib)])
    assert find(fs, "libok.so").guest_path == "/libok.so"
    assert not_found(fs, "libs.so").tried[-2:] == ["libs.so in --lib-path directory 1",
                                                  "libs.wasm in --lib-path directory 1"]
    fs.close()


def test_descriptors_are_released(root: Path) -> None:
    touch(root / "lib" / "libd.so")
    before = len(os.listdir("/proc/self/fd"))
    with fs_at(root, lib_paths=(str(root),)) as fs:
        with find(fs, "libd.so") as found:
            assert found.fd >= 0
        not_found(fs, "libnone.so")
        assert not fs.is_directory("/lib/libd.so")
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_kernel_without_openat2_switches_to_the_walk(root: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSYS (here from a syscall number no kernel has) turns openat2 off for good; the
    lookup that met it still succeeds through the walk."""
    inside = touch(root / "lib" / "libk.so")
    os.symlink(root / "lib", root / "abslib")
    monkeypatch.setattr(guestfs, "SYS_OPENAT2", 1_000_000)
    monkeypatch.setattr(guestfs, "use_openat2", True)
    with fs_at(root) as fs:
        assert find(fs, "/abslib/libk.so").host_path == str(inside)
        assert not guestfs.use_openat2
    monkeypatch.setattr(guestfs, "SYS_OPENAT2", 437)
    monkeypatch.setattr(guestfs, "use_openat2", True)  # what the fixture checks after


def test_names_over_path_max_are_refused(root: Path) -> None:
    with fs_at(root) as fs, pytest.raises(LinkError, match="at most 4096 bytes"):
        find(fs, "l" * 5000 + ".so")
