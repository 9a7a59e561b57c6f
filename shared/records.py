"""`record`: dataclass-like value classes that cost microseconds to define.

`dataclasses.dataclass` builds each class with five or six `exec` calls and an
`inspect.signature`, ~0.5-1 ms per class, and importing it imports `inspect` (and with it
`ast`, `dis`, `tokenize`): about 40 classes on the path of `wasmgroup run` cost the coordinator
and every worker 20-40 ms of their start. A record gets the same behaviour from shared
methods and an `__init__` generated when the first instance is made:

- `__init__(self, <fields in order>)`, with defaults (`name: int = 0`) and
  `field(default_factory=list)`;
- `__eq__`: same class and equal fields (fields with `field(compare=False)` left out);
- `__repr__`: `Name(a=1, b='x')` (fields with `field(repr=False)` left out);
- frozen (the default): assigning or deleting an attribute raises `FrozenInstanceError` (an
  AttributeError), and `__hash__` hashes the compared fields; `record(frozen=False)`: mutable
  and, like an eq dataclass, unhashable;
- `record_fields(cls)`: the field names in order; `__match_args__` for `match`.

Fields are the class's own annotations (no inheritance between records; ClassVar excluded).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")


class FrozenInstanceError(AttributeError):
    """An attribute of a frozen record was assigned or deleted."""


class _Field:
    __slots__ = ("compare", "default", "default_factory", "repr")

    def __init__(self, default: Any, default_factory: Callable[[], Any] | None, repr: bool,
                 compare: bool) -> None:
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.compare = compare


_MISSING: Any = object()


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None,
          repr: bool = True, compare: bool = True) -> Any:
    """A field's default (`default=` or `default_factory=`) and whether `__repr__` and
    `__eq__`/`__hash__` include it."""
    if default is not _MISSING and default_factory is not None:
        raise ValueError("a field has a default or a default_factory, not both")
    return _Field(default, default_factory, repr, compare)


def record_fields(cls: type) -> tuple[str, ...]:
    """The fields of record class `cls`, in order."""
    names: tuple[str, ...] = cls.__record_fields__  # type: ignore[attr-defined]
    return names


def _eq(self: Any, other: Any) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented  # type: ignore[no-any-return]
    key = self.__record_key__
    return bool(key(self) == key(other))


def _hash(self: Any) -> int:
    return hash(self.__record_key__(self))


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__record_repr__)
    return f"{type(self).__qualname__}({shown})"


def _frozen_setattr(self: Any, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _first_init(self: Any, *args: Any, **kwargs: Any) -> None:
    """A record's __init__ until its first instance: generates the real one (a compile,
    ~0.1 ms, which classes never instantiated in a process do not pay), then runs it."""
    cls = type(self)
    if cls.__dict__.get("__init__") is _first_init:
        cls.__init__ = _make_init(cls, *cls.__record_specs__)
    cls.__init__(self, *args, **kwargs)


def _make_init(cls: type, specs: dict[str, _Field], frozen: bool) -> Callable[..., None]:
    """`__init__(self, <fields>)`, generated: the constructor is called often (plans, parsed
    modules), and a generic one taking *args would be several times slower."""
    params, body = [], []
    scope: dict[str, Any] = {"_MISSING": _MISSING, "_set": object.__setattr__}
    for name, spec in specs.items():
        value = name
        if spec.default_factory is not None:
            scope[f"_f_{name}"] = spec.default_factory
            params.append(f"{name}=_MISSING")
            value = f"_f_{name}() if {name} is _MISSING else {name}"
        elif spec.default is not _MISSING:
            scope[f"_d_{name}"] = spec.default
            params.append(f"{name}=_d_{name}")
        else:
            params.append(name)
        body.append(f"_set(self, {name!r}, {value})" if frozen else f"self.{name} = {value}")
    source = (f"def __init__(self, {', '.join(params)}):\n "
              + ("\n ".join(body) or "pass") + "\n")
    exec(source, scope)
    init: Callable[..., None] = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _build(cls: type[T], frozen: bool) -> type[T]:
    # (Not inspect.get_annotations: importing inspect is what this module avoids.)
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    names = [n for n, a in annotations.items()
             if not (isinstance(a, str) and a.startswith(("ClassVar", "typing.ClassVar")))]
    specs: dict[str, _Field] = {}
    for name in names:
        value = cls.__dict__.get(name, _MISSING)
        spec = value if isinstance(value, _Field) else _Field(value, None, True, True)
        specs[name] = spec
        if isinstance(value, _Field):  # the class attribute is the default, if any
            if spec.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
    # The defaults' order is checked now; the __init__ is generated on first use (below).
    seen_default = False
    for name, spec in specs.items():
        if spec.default_factory is not None or spec.default is not _MISSING:
            seen_default = True
        elif seen_default:
            raise TypeError(f"{cls.__name__}: non-default field {name!r} follows a default")
    compared = [n for n, s in specs.items() if s.compare]
    key: Callable[[Any], Any] = attrgetter(*compared) if compared else (lambda _: ())
    methods: dict[str, Any] = {
        "__record_fields__": tuple(specs),
        "__record_repr__": tuple(n for n, s in specs.items() if s.repr),
        "__record_key__": staticmethod(key),
        "__match_args__": tuple(specs),
        "__record_specs__": (specs, frozen),
        "__init__": _first_init,
        "__eq__": _eq,
        "__hash__": _hash if frozen else None,  # (a mutable record is unhashable)
    }
    if "__repr__" not in cls.__dict__:
        methods["__repr__"] = _repr
    if frozen:
        methods.update(__setattr__=_frozen_setattr, __delattr__=_frozen_delattr)
    for name, value in methods.items():
        setattr(cls, name, value)
    return cls


def prepare(*classes: type) -> None:
    """Generate the `__init__` of record `classes` now (a process that forks does this once
    for its children, which would each compile it at their first instance)."""
    for cls in classes:
        if cls.__dict__.get("__init__") is _first_init:
            cls.__init__ = _make_init(cls, *cls.__record_specs__)  # type: ignore[misc,attr-defined]


@overload
def record(cls: type[T], /) -> type[T]: ...
@overload
def record(*, frozen: bool = True) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T] | None = None, /, *, frozen: bool = True
           ) -> type[T] | Callable[[type[T]], type[T]]:
    """Make `cls` a record (see the module docstring): `@record` or `@record(frozen=False)`."""
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)


__all__ = ["FrozenInstanceError", "field", "prepare", "record", "record_fields"]
