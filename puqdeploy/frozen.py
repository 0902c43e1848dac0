"""`@frozen`: immutable value classes, like `@dataclass(frozen=True)` but cheap to define.

Why not dataclasses: every command (a billing hook's `create`, the splash page's
`status --json`, an idle cron tick) defines the config classes at import, and `dataclasses`
generates each class's methods with `exec` — measured here at ~3 ms per class plus ~11 ms to
import the module, a third of the whole budget of `create`. This decorator reads the same class
bodies (annotations, defaults, `field(default_factory=..., repr=False)`, `__post_init__`) and
attaches generic methods instead, so defining a class costs microseconds.

Supported: keyword or positional construction in field order, defaults and default factories,
`__post_init__`, equality and hashing by field values, a repr that leaves out `repr=False`
fields (secrets), and immutability (assignment raises FrozenInstanceError, an AttributeError).
"""

from __future__ import annotations

from typing import Any, Callable

_MISSING: Any = object()


class FrozenInstanceError(AttributeError):
    """Assigning to a field of a frozen instance."""


class _Field:
    __slots__ = ("default", "default_factory", "repr")

    def __init__(self, default: Any, default_factory: Any, repr: bool) -> None:
        self.default = default
        self.default_factory = default_factory
        self.repr = repr


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] = _MISSING,
          repr: bool = True) -> Any:
    """A field with a default factory (for mutable or computed defaults) or hidden from repr."""
    return _Field(default, default_factory, repr)


def _frozen_setattr(self, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")


def _frozen_delattr(self, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")


def _values(self) -> tuple:
    return tuple(getattr(self, name) for name in self.__frozen_fields__)


def _eq(self, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self) -> int:
    return hash(_values(self))


def _repr(self) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__frozen_fields__
                      if name not in self.__frozen_hidden__)
    return f"{type(self).__name__}({shown})"


def frozen(cls: type) -> type:
    """Turn a class body with annotated fields into an immutable value class."""
    names: list[str] = []
    defaults: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    hidden: set[str] = set()
    for klass in reversed(cls.__mro__[:-1]):  # inherited fields first, as dataclasses do
        for name, annotation in klass.__dict__.get("__annotations__", {}).items():
            if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
                continue
            if name not in names:
                names.append(name)
            value = klass.__dict__.get(name, _MISSING)
            if isinstance(value, _Field):
                if not value.repr:
                    hidden.add(name)
                if value.default_factory is not _MISSING:
                    factories[name] = value.default_factory
                elif value.default is not _MISSING:
                    defaults[name] = value.default
                if klass is cls:
                    if value.default is not _MISSING:
                        setattr(cls, name, value.default)
                    else:
                        delattr(cls, name)
            elif value is not _MISSING:
                defaults[name] = value
    fields = tuple(names)
    field_set = frozenset(fields)
    post_init = getattr(cls, "__post_init__", None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not args and kwargs.keys() == field_set:  # every field by name: the hot path
            self.__dict__.update(kwargs)
            if post_init is not None:
                post_init(self)
            return
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__}() takes {len(fields)} positional arguments")
        for name, value in zip(fields, args):
            if name in kwargs:
                raise TypeError(f"{cls.__name__}() got two values for {name!r}")
            kwargs[name] = value
        for name in fields:
            if name in kwargs:
                value = kwargs.pop(name)
            elif name in defaults:
                value = defaults[name]
            elif name in factories:
                value = factories[name]()
            else:
                raise TypeError(f"{cls.__name__}() missing required argument {name!r}")
            object.__setattr__(self, name, value)
        if kwargs:
            raise TypeError(f"{cls.__name__}() got unexpected arguments {sorted(kwargs)}")
        if post_init is not None:
            post_init(self)

    cls.__init__ = __init__
    cls.__frozen_fields__ = fields
    cls.__frozen_hidden__ = frozenset(hidden)
    cls.__setattr__ = _frozen_setattr
    cls.__delattr__ = _frozen_delattr
    cls.__eq__ = _eq
    cls.__hash__ = _hash
    cls.__match_args__ = fields
    if "__repr__" not in cls.__dict__:
        cls.__repr__ = _repr
    return cls


def fields_of(obj: Any) -> dict[str, Any]:
    """The field values of a frozen instance, by name."""
    return {name: getattr(obj, name) for name in obj.__frozen_fields__}
