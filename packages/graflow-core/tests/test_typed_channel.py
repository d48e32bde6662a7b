"""TypedChannel: deep validation of TypedDict messages on write and on read.

This module uses ``from __future__ import annotations`` on purpose: string annotations are what
most users write, and they hide ``NotRequired``/``Required`` from ``__required_keys__`` on older
Pythons, which the validator must handle.
"""

from __future__ import annotations

import copy
import datetime as dt
import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, NewType, Optional, Protocol, TypedDict, Union

import pytest

from graflow.channels import MemoryChannel, TypedChannel
from graflow.channels.typed import compile_validator, validate

try:
    from typing import NotRequired, Required
except ImportError:  # Python 3.10
    from typing_extensions import NotRequired, Required

UserId = NewType("UserId", int)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(TypedDict):
    street: str
    zip: int


class User(TypedDict):
    name: str
    age: int
    address: Address
    email: Optional[str]  # noqa: UP045 -- the typing spelling is under test
    nickname: str | None
    tags: list[str]
    scores: dict[str, float]
    point: tuple[int, int]
    history: tuple[float, ...]
    roles: set[str]
    status: Literal["active", "banned"]
    ident: Union[int, str]  # noqa: UP007 -- the typing spelling is under test
    extra: Any
    created: dt.datetime
    note: NotRequired[str]


class Envelope(TypedDict):
    user: User
    priority: NotRequired[int]
    backup: NotRequired[Optional[Address]]  # noqa: UP045 -- the typing spelling is under test


class Partial(TypedDict, total=False):
    a: int
    b: Required[str]


class PartialChild(Partial):
    c: float


class Node(TypedDict):
    value: int
    children: list[Node]


class Misc(TypedDict):
    frozen: frozenset[int]
    empty: tuple[()]
    seq: Sequence[int]
    mapping: Mapping[str, list[int]]
    user_id: UserId
    color: Color
    one: Literal[1]
    annotated: Annotated[int, "meta"]
    kind: type[Exception]
    callback: Callable[[int], int]
    nested: list[dict[str, tuple[int, Optional[str]]]]  # noqa: UP045 -- the typing spelling is under test
    anything: object


class NotRuntime(Protocol):
    def run(self) -> None: ...


class HasProtocol(TypedDict):
    thing: NotRuntime


class HasUnresolvable(TypedDict):
    thing: DoesNotExist  # noqa: F821


def make_user() -> User:
    return {
        "name": "Ada",
        "age": 36,
        "address": {"street": "Main St", "zip": 12345},
        "email": None,
        "nickname": "ada",
        "tags": ["admin", "dev"],
        "scores": {"math": 9.5, "chess": 7},  # an int is a fine float
        "point": (1, 2),
        "history": (1.0, 2.5, 3),
        "roles": {"owner"},
        "status": "active",
        "ident": "ada-1",
        "extra": object(),
        "created": dt.datetime(2024, 1, 1),
    }


def make_envelope() -> Envelope:
    return {"user": make_user()}


def make_misc() -> Misc:
    return {
        "frozen": frozenset({1, 2}),
        "empty": (),
        "seq": (1, 2, 3),
        "mapping": {"a": [1], "b": []},
        "user_id": UserId(5),
        "color": Color.RED,
        "one": 1,
        "annotated": 3,
        "kind": ValueError,
        "callback": abs,
        "nested": [{"k": (1, None), "l": (2, "x")}],
        "anything": 3.5,
    }


@pytest.fixture
def typed() -> TypedChannel[Envelope]:
    return TypedChannel(MemoryChannel("typed"), Envelope)


def _set_path(message: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = message
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


def _del_path(message: dict[str, Any], path: tuple[Any, ...]) -> None:
    target: Any = message
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]


# -- valid messages ----------------------------------------------------------------------------------


def test_valid_message_round_trip(typed: TypedChannel[Envelope]) -> None:
    message = make_envelope()
    typed.send("msg", message)
    assert typed.receive("msg") is message  # stored as-is
    assert typed.get("msg") is message


def test_optional_fields(typed: TypedChannel[Envelope]) -> None:
    message = make_envelope()
    message["priority"] = 2
    message["backup"] = None
    message["user"]["note"] = "hi"
    message["user"]["nickname"] = None
    message["user"]["email"] = "ada@example.com"
    message["user"]["ident"] = 7
    message["user"]["age"] = True  # bool is an int, as for a type checker
    typed.set("msg", message)
    message["backup"] = {"street": "b", "zip": 1}
    typed.send("msg", message)


def test_misc_types_accept_valid() -> None:
    validate(make_misc(), Misc)


def test_partial_and_inheritance() -> None:
    validate({"b": "x"}, Partial)
    validate({"a": 1, "b": "x"}, Partial)
    with pytest.raises(TypeError, match="b: required key"):
        validate({"a": 1}, Partial)
    validate({"b": "x", "c": 1}, PartialChild)  # the child is total: c is required, a stays optional
    with pytest.raises(TypeError, match="c: required key of PartialChild is missing"):
        validate({"b": "x"}, PartialChild)
    with pytest.raises(TypeError, match="c: expected float, got str"):
        validate({"b": "x", "c": "no"}, PartialChild)


def test_recursive_typeddict() -> None:
    tree = {"value": 1, "children": [{"value": 2, "children": []}, {"value": 3, "children": []}]}
    validate(tree, Node)
    tree["children"][1]["children"] = [{"value": "four", "children": []}]
    with pytest.raises(TypeError, match=r"children\[1\]\.children\[0\]\.value: expected int, got str"):
        validate(tree, Node)


# -- invalid messages: the error names the field ----------------------------------------------------------

INVALID_CASES: list[tuple[str, tuple[Any, ...], Any, str]] = [
    ("nested_int", ("user", "address", "zip"), "12345", "user.address.zip: expected int, got str"),
    ("str_field", ("user", "name"), 5, "user.name: expected str, got int"),
    ("optional", ("user", "email"), 5, "user.email: expected Optional[str], got int"),
    ("pipe_none", ("user", "nickname"), 1.5, "user.nickname: expected str | None, got float"),
    ("list_item", ("user", "tags"), ["ok", 2], "user.tags[1]: expected str, got int"),
    ("list_type", ("user", "tags"), ("a",), "user.tags: expected list, got tuple"),
    ("dict_value", ("user", "scores"), {"math": "high"}, "user.scores['math']: expected float, got str"),
    ("dict_key", ("user", "scores"), {1: 2.0}, "user.scores[1]: bad key: expected str, got int"),
    ("dict_type", ("user", "scores"), [("a", 1.0)], "user.scores: expected dict, got list"),
    ("tuple_type", ("user", "point"), [1, 2], "user.point: expected tuple[int, int], got list"),
    ("tuple_len", ("user", "point"), (1, 2, 3), "user.point: expected tuple[int, int] with 2 item(s), got 3"),
    ("tuple_item", ("user", "point"), (1, "2"), "user.point[1]: expected int, got str"),
    ("var_tuple", ("user", "history"), (1.0, "x"), "user.history[1]: expected float, got str"),
    ("set_item", ("user", "roles"), {1}, "user.roles[*]: expected str, got int"),
    ("set_type", ("user", "roles"), ["owner"], "user.roles: expected set, got list"),
    ("literal", ("user", "status"), "unknown", "user.status: expected one of 'active', 'banned', got 'unknown'"),
    ("union", ("user", "ident"), 1.5, "user.ident: expected Union[int, str], got float"),
    ("plain_class", ("user", "created"), "2024-01-01", "user.created: expected datetime, got str"),
    ("not_required_wrong", ("user", "note"), 3, "user.note: expected str, got int"),
    ("nested_td_type", ("user", "address"), "Main St", "user.address: expected Address (a dict), got str"),
    ("top_not_required", ("priority",), "high", "priority: expected int, got str"),
    ("optional_td_inner", ("backup",), {"street": "s", "zip": "z"}, "backup.zip: expected int, got str"),
    ("unexpected_key", ("user", "address", "city"), "X", "user.address.city: unexpected key: Address declares"),
    ("none_for_int", ("user", "age"), None, "user.age: expected int, got None"),
]


@pytest.mark.parametrize(
    ("path", "value", "expected"), [c[1:] for c in INVALID_CASES], ids=[c[0] for c in INVALID_CASES]
)
def test_invalid_field_is_named(
    typed: TypedChannel[Envelope], path: tuple[Any, ...], value: Any, expected: str
) -> None:
    message = make_envelope()
    _set_path(message, path, value)
    with pytest.raises(TypeError) as info:
        typed.send("msg", message)
    assert expected in str(info.value)
    assert "channel key 'msg'" in str(info.value)
    assert not typed.exists("msg"), "an invalid message must not be stored"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("user", "age"), "user.age: required key of User is missing"),
        (("user", "address", "zip"), "user.address.zip: required"),
    ],
)
def test_missing_required_key(typed: TypedChannel[Envelope], path: tuple[Any, ...], expected: str) -> None:
    message = make_envelope()
    _del_path(message, path)
    with pytest.raises(TypeError, match=expected):
        typed.send("msg", message)


def test_not_a_dict(typed: TypedChannel[Envelope]) -> None:
    with pytest.raises(TypeError, match=r"expected Envelope \(a dict\), got list"):
        typed.send("msg", [])  # type: ignore[arg-type]


MISC_INVALID: list[tuple[str, Any, str]] = [
    ("frozen", {1, 2}, "frozen: expected frozenset, got set"),
    ("empty", (1,), "empty: expected tuple[()] with 0 item(s), got 1"),
    ("seq", "abc", "seq[0]: expected int, got str"),
    ("seq", {1}, "seq: expected Sequence, got set"),
    ("mapping", {"a": [1, "2"]}, "mapping['a'][1]: expected int, got str"),
    ("user_id", "5", "user_id: expected int, got str"),
    ("color", "red", "color: expected Color, got str"),
    ("one", True, "one: expected one of 1, got True"),
    ("one", 1.0, "one: expected one of 1, got 1.0"),
    ("annotated", "3", "annotated: expected int, got str"),
    ("kind", int, "kind: expected a subclass of Exception"),
    ("kind", ValueError("x"), "kind: expected a subclass of Exception"),
    ("callback", 5, "callback: expected"),
    ("nested", [{"k": (1, 2)}], "nested[0]['k'][1]: expected Optional[str], got int"),
]


@pytest.mark.parametrize(("field", "value", "expected"), MISC_INVALID)
def test_misc_invalid(field: str, value: Any, expected: str) -> None:
    message = make_misc()
    message[field] = value  # type: ignore[literal-required]
    with pytest.raises(TypeError) as info:
        validate(message, Misc)
    assert expected in str(info.value)


# -- reading ------------------------------------------------------------------------------------------


def test_reading_a_mismatching_value_raises(typed: TypedChannel[Envelope]) -> None:
    bad = make_envelope()
    bad["user"]["address"]["zip"] = "oops"  # type: ignore[typeddict-item]
    typed.channel.set("raw", bad)  # written around the typed view
    with pytest.raises(TypeError) as info:
        typed.receive("raw")
    message = str(info.value)
    assert "channel key 'raw'" in message and "not a valid Envelope" in message
    assert "user.address.zip: expected int, got str" in message
    typed.channel.set("none", None)
    with pytest.raises(TypeError, match="got None"):
        typed.get("none")


def test_receive_missing_returns_default(typed: TypedChannel[Envelope]) -> None:
    assert typed.receive("missing") is None
    fallback = make_envelope()
    assert typed.receive("missing", fallback) is fallback


def test_send_does_not_alter_message(typed: TypedChannel[Envelope]) -> None:
    message = make_envelope()
    before = copy.deepcopy({k: v for k, v in message["user"].items() if k != "extra"})
    typed.send("msg", message)
    assert {k: v for k, v in message["user"].items() if k != "extra"} == before


# -- wrapper surface ----------------------------------------------------------------------------------


def test_pass_through_methods() -> None:
    channel = MemoryChannel("sess")
    typed: TypedChannel[Address] = TypedChannel(channel, Address)
    assert typed.channel is channel
    assert typed.name == "sess"
    assert typed.message_type is Address
    typed.send("a", {"street": "s", "zip": 1}, ttl=100)
    assert typed.keys() == ["a"]
    assert typed.exists("a")
    assert typed.delete("a") is True
    assert not typed.exists("a")
    assert typed.is_valid({"street": "s", "zip": 1})
    assert not typed.is_valid({"street": "s"})
    with pytest.raises(TypeError, match="Invalid Address message: zip: expected int"):
        typed.validate({"street": "s", "zip": "1"})
    assert "Address" in repr(typed)


def test_checkers_are_cached() -> None:
    assert compile_validator(User) is compile_validator(User)
    assert compile_validator(list[int]) is compile_validator(list[int])


def test_unsupported_annotations_fail_at_construction() -> None:
    with pytest.raises(TypeError, match="runtime_checkable"):
        TypedChannel(MemoryChannel(), HasProtocol)
    with pytest.raises(TypeError, match="DoesNotExist"):
        TypedChannel(MemoryChannel(), HasUnresolvable)


def test_non_typeddict_message_types() -> None:
    typed: TypedChannel[list[int]] = TypedChannel(MemoryChannel(), list[int])  # type: ignore[arg-type]
    typed.send("xs", [1, 2])
    with pytest.raises(TypeError, match=r"\[2\]: expected int, got str"):
        typed.send("xs", [1, 2, "3"])
