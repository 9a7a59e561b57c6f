"""Fuzzing, bounded: damaged real modules must be refused in one line or work.

Two tests: `test_damaged_modules_in_process` runs each hypothesis example through the reader,
`inspect`, the compile cache (validation, rewrite, compile) and the linker's dlopen planning
(the linker/cache path directly: a full run per example would cost a worker start each);
`test_damaged_libraries_dlopened_by_a_real_program` dlopens a seeded batch of damaged
libraries in one real run of the plugin host. Deterministic (a fixed seed) and a few seconds
here; `scripts/fuzz-modules` runs both for longer with fresh seeds.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import sys
import time
from pathlib import Path

import fuzz_modules as fz
import mutate
from hypothesis import HealthCheck, given, seed, settings
from leaks import assert_nothing_left, open_fds
from mutate import MEM_INFO_FIELDS

EXAMPLES = int(os.environ.get("WASMGROUP_FUZZ_EXAMPLES", "60"))
BATCHES = int(os.environ.get("WASMGROUP_FUZZ_BATCHES", "1"))
SEED = os.environ.get("WASMGROUP_FUZZ_SEED")  # unset: the fixed seed of the bounded run


def test_damaged_modules_in_process(guests: Path, tmp_path: Path) -> None:
    cache = fz.make_cache(tmp_path / "cache")
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=SEED is None, database=None,
              suppress_health_check=list(HealthCheck))
    @seed(int(SEED or 0))
    @given(fz.mutations(guests))
    def example(case: tuple[str, bytes]) -> None:
        _, data = case
        outcome = fz.check_in_process(data, tmp_path, guests, cache, sum(outcomes.values()))
        outcomes[outcome] += 1
        every = fz.progress_every()
        if every and sum(outcomes.values()) % every == 0:
            print(f"fuzz-modules: {sum(outcomes.values())} examples in "
                  f"{time.monotonic() - started:.0f} s: {dict(outcomes)}", file=sys.stderr)

    example()
    # The mutations reach every stage, not only the reader's first check.
    assert outcomes["invalid"] or outcomes["malformed"]
    assert outcomes["planned"] or outcomes["refused by the linker"]


def damaged_batch(guests: Path, rng: random.Random, count: int) -> dict[str, bytes]:
    """`count` damaged copies of libhello.so and libmath.so: no bit flips in code (a flipped
    branch may loop forever, and the run would wait for it)."""
    sources = [(guests / "plugins" / "plugins" / n).read_bytes()
               for n in ("libhello.so", "libmath.so")]
    u32s = [0, 1, 16, 17, 31, 2**16, 2**20, 2**20 + 1, 2**31, 2**32 - 1]
    batch = {}
    for i in range(count):
        data = rng.choice(sources)
        kind = rng.randrange(5)
        if kind == 0:
            data = mutate.mem_info(data, rng.choice(MEM_INFO_FIELDS), rng.choice(u32s))
        elif kind == 1:
            data = mutate.vector_count(data, rng.randrange(30), rng.choice([*u32s, 2, 3, 5]))
        elif kind == 2:
            data = mutate.section_size(data, rng.randrange(30), rng.choice([*u32s, 2, 3, 5]))
        elif kind == 3:
            data = mutate.truncate(data, rng.randrange(len(data)))
        else:  # a bit flip anywhere but in code: imports, exports, types, data, dylink.0
            code = [s for s in mutate.sections(data) if s.id == 10]
            spot = rng.randrange(len(data))
            while code and code[0].start <= spot < code[0].end:
                spot = rng.randrange(len(data))
            data = mutate.bit_flip(data, spot, rng.randrange(8))
        batch[f"lib{i:03d}.so"] = data
    return batch


def test_damaged_libraries_dlopened_by_a_real_program(guests: Path, tmp_path: Path) -> None:
    seed = int(SEED) if SEED is not None else 8
    for round_ in range(BATCHES):
        rng = random.Random(seed + round_)
        plugins = tmp_path / f"plugins{round_}"
        plugins.mkdir()
        batch = damaged_batch(guests, rng, 12)
        for name, data in batch.items():
            (plugins / name).write_bytes(data)
        shutil.copy(guests / "plugins" / "plugins" / "libhello.so", plugins / "zz_good.so")
        fds = open_fds()
        code, lines = fz.run_plugin_host(guests, plugins)
        assert_nothing_left(fds)
        # Every damaged library got its line, in order, and the good one after them loaded;
        # unless one that loaded trapped when called (a renamed import, say): then the run
        # ended there (one line, checked by run_plugin_host).
        named = [line.split(":")[0].split()[1] for line in lines]
        if code == 134:
            assert named == sorted(batch)[:len(named)]
        else:
            assert named == [*sorted(batch), "zz_good.so"], lines
            assert lines[-1].startswith("loaded zz_good.so"), lines
        if fz.progress_every():
            print(f"fuzz-modules: dlopen round {round_ + 1}/{BATCHES} (seed {seed + round_}): "
                  f"{sum(line.startswith('failed') for line in lines)} refused", file=sys.stderr)


def test_damaged_mains_start_or_are_refused(guests: Path, tmp_path: Path) -> None:
    """The start path (main layout, memory, NEEDED chain) for damaged PIE mains."""
    rng = random.Random(int(SEED) if SEED is not None else 3)
    pie = (guests / "pie" / "main.wasm").read_bytes()
    cases = [mutate.mem_info(pie, "mem_size", 2**32 - 2**16),  # data fits, stack does not
             mutate.mem_info(pie, "table_size", 2**20),  # one past the table limit with main's
             mutate.mem_info(pie, "mem_align", 16)]  # legal: runs
    cases += [mutate.mem_info(pie, rng.choice(MEM_INFO_FIELDS), rng.randrange(2**32))
              for _ in range(BATCHES - 1)]  # only in longer runs
    fds = open_fds()
    outcomes = []
    for i, data in enumerate(cases):
        main = tmp_path / f"main{i}.wasm"
        main.write_bytes(data)
        outcomes.append(fz.start_main(main, guests))
    assert_nothing_left(fds)
    assert outcomes[:3] == ["refused", "refused", "ran"]
