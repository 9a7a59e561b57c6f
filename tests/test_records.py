"""shared/records.py: records behave as the dataclasses they replace on the start path."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from wasmgroup.shared.plan import Binding, ModulePlan, from_wire, to_wire, type_text
from wasmgroup.shared.plan import LoadPlan as PlanLoad
from wasmgroup.shared.records import FrozenInstanceError, field, prepare, record, record_fields
from wasmgroup.shared.wasm import FuncType


@record
class Point:
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)
    fd: int = field(default=-1, compare=False)

    @property
    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


@record(frozen=False)
class Box:
    """A mutable record."""

    size: int
    secret: dict[str, int] = field(default_factory=dict, repr=False)


def test_init_defaults_and_factories() -> None:
    p = Point(1)
    assert (p.x, p.y, p.tags, p.fd) == (1, 0, [], -1)
    assert Point(1).tags is not Point(1).tags  # a fresh list each time
    assert Point(x=2, y=3, tags=["a"], fd=7).norm1 == 5
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    assert record_fields(Point) == ("x", "y", "tags", "fd") == Point.__match_args__


def test_equality_hash_and_repr() -> None:
    assert Point(1, 2) == Point(1, 2, fd=9)  # fd is not compared
    assert Point(1, 2) != Point(2, 1)
    assert Point(1) != (1, 0, [], -1)  # only the same class compares equal
    assert hash(Point(1, 2, ())) == hash(Point(1, 2, (), fd=5))  # type: ignore[arg-type]
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=[], fd=-1)"
    assert repr(Box(3, {"k": 1})) == "Box(size=3)"  # repr=False fields left out
    assert Box.__doc__ == "A mutable record."


def test_frozen_and_mutable() -> None:
    p = Point(1)
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'x'"):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.y  # type: ignore[misc]
    box = Box(1)
    box.size = 2
    assert box == Box(2)
    with pytest.raises(TypeError, match="unhashable"):
        hash(box)


def test_pickle_and_match() -> None:
    p = Point(1, 2, ["t"])
    assert pickle.loads(pickle.dumps(p)) == p
    match p:
        case Point(1, y):
            assert y == 2
        case _:
            pytest.fail("no match")


def test_a_non_default_field_after_a_default_is_refused() -> None:
    with pytest.raises(TypeError, match="non-default field 'b' follows a default"):
        @record
        class Bad:
            a: int = 0
            b: int


def test_plans_round_trip_through_the_wire() -> None:
    plan = PlanLoad([ModulePlan(2, "libfoo.so", "/lib/libfoo.so", "/h/libfoo.so", 1024, 4, 2,
                                64, [Binding("env", "f", "func", 0, 1, "f")],
                                {"f": ["func", 3]})], 8, [])
    assert from_wire(to_wire(plan)) == plan
    assert FuncType(("i32",), ()) in {FuncType(("i32",), ())}


def test_prepare_makes_the_constructor_before_the_first_instance() -> None:
    @record
    class Fresh:
        a: int
        b: str = "x"

    lazy = Fresh.__init__
    prepare(Fresh)
    assert Fresh.__init__ is not lazy  # generated now, not at the first instance
    made = Fresh.__init__
    assert Fresh(1) == Fresh(1, "x") and Fresh(2, "y").b == "y"
    assert Fresh.__init__ is made
    prepare(Fresh)  # again: nothing to do
    assert Fresh.__init__ is made


def test_plans_carry_the_type_of_each_global_they_make() -> None:
    """The type travels with the plan (a group makes the global without reading the
    module's imports), but a binding is the same whatever the import's type."""
    typed = Binding("GOT.mem", "x", "const", 16, 0, "", type_text(None, value="i32",
                                                                   mutable=True))
    assert typed == Binding("GOT.mem", "x", "const", 16)
    plan = PlanLoad([ModulePlan(2, "l.so", "/lib/l.so", "/h/l.so", 1024, 4, 2, 64, [typed])],
                    8, [])
    (module,) = from_wire(to_wire(plan)).modules  # type: ignore[union-attr]
    assert module.bindings[0].import_type == "mut i32"
    assert type_text(("i32", "i64"), ("f64",)) == "(i32 i64) -> (f64)"
    assert type_text(("v128",)) == "" and type_text(None, value="f32") == ""


def test_a_command_line_start_imports_no_dataclasses_nor_wasmtime() -> None:
    """What `wasmgroup run` imports before its fork server starts and its own modules after:
    neither dataclasses (inspect, ast, dis) nor wasmtime (the workers import that)."""
    code = ("import sys; import wasmgroup.orchestrator.cli, wasmgroup.orchestrator.forkserver,"
            " wasmgroup.orchestrator.program; print(sorted(m for m in sys.modules if m in "
            "('dataclasses', 'inspect', 'wasmtime', 'wasmgroup.worker.group', 'tempfile')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
