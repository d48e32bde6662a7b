"""Type-checked access to a channel: ``TypedChannel(channel, MyTypedDict)``.

Tasks that exchange structured messages through a channel otherwise find a malformed message only
when a downstream task trips over it, far from the task that wrote it. ``TypedChannel`` checks
every message against a ``TypedDict`` (deeply: nested TypedDicts, ``Optional``, ``list[int]``,
``dict[str, float]``, ``Literal``, ...) when it is written, so the error points at the writer and
names the offending field (``user.address.zip: expected int, got str``). Values read back are
checked too, because another writer may have used the raw channel.

Annotations are compiled once per type into small checker functions and cached, so validation
costs a few dict lookups and ``isinstance`` calls per field, not a walk through ``typing``.

Type rules follow what a static type checker accepts: ``int`` is fine where ``float`` (or
``complex``) is expected, ``bool`` where ``int`` is, a TypedDict is a ``dict`` holding its required
keys and no keys it does not declare.
"""

from __future__ import annotations

import collections.abc
import sys
import threading
import types
import typing
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from graflow.channels.base import Channel

T = TypeVar("T")

_MISSING: Any = object()

Checker = Callable[[Any, str], None]


class _Invalid(Exception):
    """Internal: a value failed validation at ``path`` (turned into a TypeError at the API boundary)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def describe(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


# -- helpers ----------------------------------------------------------------------------------------


def _special_forms(name: str) -> tuple[Any, ...]:
    """``typing.<name>`` and ``typing_extensions.<name>`` (only if the user already imported it).

    We never import typing_extensions ourselves: a TypedDict built with it means it is loaded.
    """
    found = []
    for module in (typing, sys.modules.get("typing_extensions")):
        obj = getattr(module, name, None) if module is not None else None
        if obj is not None and obj not in found:
            found.append(obj)
    return tuple(found)


def _describe(tp: Any) -> str:
    """A short human name for an annotation, as used in error messages."""
    if tp is None or tp is type(None):
        return "None"
    if isinstance(tp, type) and get_origin(tp) is None:
        return tp.__name__
    return repr(tp).replace("typing_extensions.", "").replace("typing.", "")


def _got(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field(path: str, key: Any) -> str:
    name = key if isinstance(key, str) else repr(key)
    return f"{path}.{name}" if path else name


def _is_typeddict(tp: Any) -> bool:
    # Duck-typed so typing_extensions.TypedDict classes count too.
    return (
        isinstance(tp, type)
        and issubclass(tp, dict)
        and hasattr(tp, "__required_keys__")
        and hasattr(tp, "__optional_keys__")
    )


def _accept(value: Any, path: str) -> None:
    return None


def _check_none(value: Any, path: str) -> None:
    if value is not None:
        raise _Invalid(path, f"expected None, got {_got(value)}")


# -- compiler ---------------------------------------------------------------------------------------

_CACHE: dict[Any, Checker] = {}


def _cache_key(tp: Any) -> tuple[type, Any]:
    # The annotation's own type is part of the key: ``Optional[str] == str | None`` but the error
    # messages should spell the annotation the way the user wrote it.
    return (type(tp), tp)


_COMPILE_LOCK = threading.RLock()


class _TypedDictChecker:
    """Checks one TypedDict class; fields are filled in after creation so recursive types work."""

    def __init__(self, tp: type) -> None:
        self.tp = tp
        self.type_name = tp.__name__
        self.fields: dict[str, Checker] = {}
        self.required: frozenset[str] = frozenset()

    def __call__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _Invalid(path, f"expected {self.type_name} (a dict), got {_got(value)}")
        if not self.required.issubset(value.keys()):
            missing = sorted(self.required.difference(value.keys()))[0]
            raise _Invalid(_field(path, missing), f"required key of {self.type_name} is missing")
        fields = self.fields
        for key, item in value.items():
            check = fields.get(key) if isinstance(key, str) else None
            if check is None:
                known = ", ".join(fields) or "none"
                raise _Invalid(_field(path, key), f"unexpected key: {self.type_name} declares only {known}")
            check(item, _field(path, key))


class _Compiler:
    """Turns one annotation into a checker; ``pending`` holds TypedDicts being compiled (recursion)."""

    def __init__(self) -> None:
        self.pending: dict[type, _TypedDictChecker] = {}
        self.built: dict[Any, Checker] = {}
        self.required_forms = _special_forms("Required")
        self.not_required_forms = _special_forms("NotRequired")
        self.unwrap_forms = (
            self.required_forms
            + self.not_required_forms
            + _special_forms("ReadOnly")
            + _special_forms("ClassVar")
            + _special_forms("Final")
        )
        self.annotated_forms = _special_forms("Annotated")

    def compile(self, tp: Any) -> Checker:
        key = _cache_key(tp)
        try:
            cached = self.pending.get(tp) or _CACHE.get(key) or self.built.get(key)
        except TypeError:  # unhashable annotation (e.g. Annotated with a list): just don't cache it
            return self._build(tp)
        if cached is not None:
            return cached
        checker = self._build(tp)
        self.built[key] = checker
        return checker

    def _build(self, tp: Any) -> Checker:
        if tp is Any or tp is object:
            return _accept
        if tp is None or tp is type(None):
            return _check_none
        if isinstance(tp, (str, typing.ForwardRef)):
            raise TypeError(f"Cannot resolve the forward reference {tp!r}; define the type at module level")
        if isinstance(tp, TypeVar):
            if tp.__bound__ is not None:
                return self.compile(tp.__bound__)
            if tp.__constraints__:
                return self._union(tp, tp.__constraints__)
            return _accept
        supertype = getattr(tp, "__supertype__", None)  # typing.NewType
        if supertype is not None:
            return self.compile(supertype)
        if type(tp).__name__ == "TypeAliasType":  # Python 3.12 `type X = ...`
            return self.compile(tp.__value__)
        if any(tp is form for form in _special_forms("LiteralString")):
            return self.compile(str)
        if any(tp is form for form in _special_forms("Never") + _special_forms("NoReturn")):
            return self._never

        origin = get_origin(tp)
        args = get_args(tp)
        if origin is not None and any(origin is form for form in self.annotated_forms):
            return self.compile(args[0])
        if origin is not None and any(origin is form for form in self.unwrap_forms):
            return self.compile(args[0])
        if origin is Union or origin is types.UnionType:
            return self._union(tp, args)
        if origin is Literal:
            return self._literal(args)
        if _is_typeddict(tp):
            return self._typeddict(tp)
        if origin is None:
            if isinstance(tp, type):
                return self._plain_class(tp)
            raise TypeError(f"Unsupported annotation {tp!r}; use Any to skip validation of this field")
        return self._generic(tp, origin, args)

    # -- building blocks --------------------------------------------------------------------------
    @staticmethod
    def _never(value: Any, path: str) -> None:
        raise _Invalid(path, f"no value is allowed here (Never), got {_got(value)}")

    def _plain_class(self, cls: type) -> Checker:
        if getattr(cls, "_is_protocol", False) and not getattr(cls, "_is_runtime_protocol", False):
            raise TypeError(
                f"Protocol {cls.__name__} cannot be checked at run time; decorate it with "
                f"@typing.runtime_checkable or annotate the field with Any"
            )
        # The numeric tower of PEP 484: an int is acceptable where a float or complex is expected.
        accepted: tuple[type, ...] = (cls,)
        if cls is float:
            accepted = (float, int)
        elif cls is complex:
            accepted = (complex, float, int)
        name = cls.__name__

        def check_instance(value: Any, path: str) -> None:
            if not isinstance(value, accepted):
                raise _Invalid(path, f"expected {name}, got {_got(value)}")

        return check_instance

    def _union(self, tp: Any, members: tuple[Any, ...]) -> Checker:
        allows_none = any(m is None or m is type(None) for m in members)
        arms = [self.compile(m) for m in members if m is not None and m is not type(None)]
        name = _describe(tp)

        def check_union(value: Any, path: str) -> None:
            if value is None and allows_none:
                return
            errors: list[_Invalid] = []
            for arm in arms:
                try:
                    arm(value, path)
                    return
                except _Invalid as exc:
                    errors.append(exc)
            # When exactly one arm got past the outer shape (say the dict of Optional[User]), its
            # error is the useful one: it names the nested field that is wrong.
            deeper = [e for e in errors if e.path != path]
            if len(deeper) == 1:
                raise deeper[0]
            raise _Invalid(path, f"expected {name}, got {_got(value)}")

        return check_union

    @staticmethod
    def _literal(values: tuple[Any, ...]) -> Checker:
        allowed = values
        listing = ", ".join(repr(v) for v in values)

        def check_literal(value: Any, path: str) -> None:
            for candidate in allowed:
                # Compare types too: Literal[1] must not accept True, Literal[0] not 0.0.
                if type(value) is type(candidate) and value == candidate:
                    return
            raise _Invalid(path, f"expected one of {listing}, got {_short_repr(value)}")

        return check_literal

    def _typeddict(self, tp: type) -> Checker:
        checker = _TypedDictChecker(tp)
        self.pending[tp] = checker
        try:
            try:
                hints = get_type_hints(tp, include_extras=True)
            except Exception as exc:
                raise TypeError(
                    f"Cannot resolve the annotations of {tp.__name__}: {type(exc).__name__}: {exc}. "
                    f"Define the TypedDict and the types it uses at module level."
                ) from exc
            required = set(getattr(tp, "__required_keys__", ()))
            for field_name, hint in hints.items():
                qualifier = self._qualifier(hint)
                if qualifier is True:
                    required.add(field_name)
                elif qualifier is False:
                    required.discard(field_name)
                checker.fields[field_name] = self.compile(hint)
            checker.required = frozenset(required & set(hints))
        finally:
            del self.pending[tp]
        return checker

    def _qualifier(self, hint: Any) -> bool | None:
        """True for ``Required[...]``, False for ``NotRequired[...]``, None when neither is written.

        ``__required_keys__`` misses these qualifiers when annotations are strings (``from
        __future__ import annotations``) on older Pythons, so we read them off the resolved hints.
        """
        while True:
            origin = get_origin(hint)
            if origin is None:
                return None
            if any(origin is form for form in self.required_forms):
                return True
            if any(origin is form for form in self.not_required_forms):
                return False
            if any(origin is form for form in self.annotated_forms + self.unwrap_forms):
                hint = get_args(hint)[0]
                continue
            return None

    def _generic(self, tp: Any, origin: Any, args: tuple[Any, ...]) -> Checker:
        if origin is tuple:
            return self._tuple(tp, args)
        if origin is type:
            return self._type_of(args[0] if args else Any)
        if origin is collections.abc.Callable:
            return self._callable(tp)
        if not isinstance(origin, type):
            raise TypeError(f"Unsupported annotation {tp!r}; use Any to skip validation of this field")
        container_name = _describe(origin)
        if issubclass(origin, collections.abc.Mapping) and len(args) == 2:
            return self._mapping(origin, container_name, self.compile(args[0]), self.compile(args[1]))
        if (
            issubclass(origin, (collections.abc.Sequence, collections.abc.Set))
            and len(args) == 1
            and not issubclass(origin, (str, bytes))
        ):
            return self._collection(origin, container_name, self.compile(args[0]))
        # Any other generic (Iterator[int], MyGeneric[T], ...): check the container type only, since
        # looking inside could consume an iterator or guess at a user class's structure.
        return self._plain_class(origin)

    @staticmethod
    def _callable(tp: Any) -> Checker:
        name = _describe(tp)

        def check_callable(value: Any, path: str) -> None:
            if not callable(value):
                raise _Invalid(path, f"expected {name}, got {_got(value)}")

        return check_callable

    def _type_of(self, inner: Any) -> Checker:
        if inner is Any or inner is object:
            bases: tuple[type, ...] = (object,)
        else:
            members = get_args(inner) if get_origin(inner) in (Union, types.UnionType) else (inner,)
            bases = tuple(get_origin(m) or m for m in members)
        name = " | ".join(b.__name__ for b in bases)

        def check_type(value: Any, path: str) -> None:
            if not (isinstance(value, type) and issubclass(value, bases)):
                raise _Invalid(path, f"expected a subclass of {name}, got {_short_repr(value)}")

        return check_type

    @staticmethod
    def _mapping(origin: type, container_name: str, check_key: Checker, check_value: Checker) -> Checker:
        def check_mapping(value: Any, path: str) -> None:
            if not isinstance(value, origin):
                raise _Invalid(path, f"expected {container_name}, got {_got(value)}")
            for key, item in value.items():
                where = f"{path}[{key!r}]"
                try:
                    check_key(key, where)
                except _Invalid as exc:
                    raise _Invalid(where, f"bad key: {exc.message}") from None
                check_value(item, where)

        return check_mapping

    @staticmethod
    def _collection(origin: type, container_name: str, check_item: Checker) -> Checker:
        is_set = issubclass(origin, collections.abc.Set)

        def check_collection(value: Any, path: str) -> None:
            if not isinstance(value, origin):
                raise _Invalid(path, f"expected {container_name}, got {_got(value)}")
            if is_set:
                for item in value:
                    check_item(item, f"{path}[*]")
            else:
                for index, item in enumerate(value):
                    check_item(item, f"{path}[{index}]")

        return check_collection

    def _tuple(self, tp: Any, args: tuple[Any, ...]) -> Checker:
        name = _describe(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return self._collection(tuple, name, self.compile(args[0]))
        if args in ((), ((),)):
            items: list[Checker] = []
        else:
            items = [self.compile(a) for a in args]
        length = len(items)

        def check_tuple(value: Any, path: str) -> None:
            if not isinstance(value, tuple):
                raise _Invalid(path, f"expected {name}, got {_got(value)}")
            if len(value) != length:
                raise _Invalid(path, f"expected {name} with {length} item(s), got {len(value)}")
            for index, (check, item) in enumerate(zip(items, value)):
                check(item, f"{path}[{index}]")

        return check_tuple


def compile_validator(tp: Any) -> Checker:
    """The cached checker for annotation ``tp``; raises TypeError for an unsupported annotation."""
    try:
        cached = _CACHE.get(_cache_key(tp))
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    with _COMPILE_LOCK:
        compiler = _Compiler()
        checker = compiler.compile(tp)
        # Publish only complete checkers (a recursive TypedDict is complete once compile returns).
        for key, value in compiler.built.items():
            _CACHE.setdefault(key, value)
        return checker


def validate(value: Any, tp: Any) -> None:
    """Raise TypeError naming the offending field when ``value`` does not match annotation ``tp``."""
    try:
        compile_validator(tp)(value, "")
    except _Invalid as exc:
        raise TypeError(exc.describe()) from None


# -- the public wrapper -----------------------------------------------------------------------------


class TypedChannel(Generic[T]):
    """A view of ``channel`` whose values must match ``message_type`` (normally a ``TypedDict`` class).

    ``send``/``receive`` are upstream's names; ``set``/``get`` are aliases so a ``TypedChannel`` can
    stand in where a plain channel is expected. Messages are stored as-is in the underlying channel.
    """

    def __init__(self, channel: Channel, message_type: type[T]) -> None:
        self.channel = channel
        self.message_type = message_type
        self._type_name = _describe(message_type)
        # Compile now so an unsupported annotation fails here, not at the first send.
        self._check = compile_validator(message_type)

    @property
    def name(self) -> str:
        """The underlying channel's name (the run's session id)."""
        return self.channel.name

    def validate(self, message: Any) -> None:
        """Raise TypeError (naming the field path) when ``message`` does not match the message type."""
        try:
            self._check(message, "")
        except _Invalid as exc:
            raise TypeError(f"Invalid {self._type_name} message: {exc.describe()}") from None

    def is_valid(self, message: Any) -> bool:
        """True when ``message`` matches the message type."""
        try:
            self._check(message, "")
        except _Invalid:
            return False
        return True

    def send(self, key: str, message: T, ttl: float | None = None) -> None:
        """Validate ``message`` deeply and store it under ``key``; nothing is stored when it is invalid."""
        try:
            self._check(message, "")
        except _Invalid as exc:
            raise TypeError(f"Invalid {self._type_name} message for channel key '{key}': {exc.describe()}") from None
        self.channel.set(key, message, ttl)

    def receive(self, key: str, default: T | None = None) -> T | None:
        """The message under ``key`` (validated), or ``default`` when the key is missing.

        A stored value that does not match raises TypeError: someone wrote it through the raw
        channel, and handing it on would only move the failure further from its cause.
        """
        value = self.channel.get(key, _MISSING)
        if value is _MISSING:
            return default
        try:
            self._check(value, "")
        except _Invalid as exc:
            raise TypeError(
                f"The value stored under channel key '{key}' is not a valid {self._type_name}: {exc.describe()}"
            ) from None
        return typing.cast(T, value)

    def set(self, key: str, message: T, ttl: float | None = None) -> None:
        """Alias of :meth:`send`."""
        self.send(key, message, ttl)

    def get(self, key: str, default: T | None = None) -> T | None:
        """Alias of :meth:`receive`."""
        return self.receive(key, default)

    def keys(self) -> list[str]:
        return self.channel.keys()

    def exists(self, key: str) -> bool:
        return self.channel.exists(key)

    def delete(self, key: str) -> bool:
        return self.channel.delete(key)

    def __repr__(self) -> str:
        return f"TypedChannel({self.channel!r}, {self._type_name})"


__all__ = ["TypedChannel", "compile_validator", "validate"]
