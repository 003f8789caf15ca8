"""The schema registry on the bus (hub/schemas.py) and the check in `Bus.prepare`, in process.

Refusals name the failing path, accepted events carry `dataschema`, a tenant's
schema never applies to another tenant, and everything survives a restart on
sqlite (stored under `$schemas/<tenant>` in the engine's group store).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import hybridbus
from hybridbus.errors import (
    ErrorCode,
    InvalidEvent,
    InvalidSchema,
    SchemaIncompatible,
    SchemaViolation,
    UnknownSchema,
)

pytestmark = pytest.mark.timeout(60)

ORDER = "com.acme.order"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["items"],
    "additionalProperties": False,
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sku", "qty"],
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
            },
        },
        "note": {"type": "string"},
    },
}


def order(data: Any, id: str = "o1", **more: Any) -> dict[str, Any]:
    return {"id": id, "source": "/shop", "type": ORDER, "data": data, **more}


def _nested(depth: int) -> Any:
    data: Any = []
    for _ in range(depth):
        data = [data]
    return data


GOOD = {"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]}
BAD = {"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}, {"sku": "c", "qty": 0}]}


async def test_a_type_with_a_schema_is_checked_and_named() -> None:
    async with hybridbus.open("memory://") as bus:
        await bus.publish("acme/orders/1", order(BAD, "before"))  # no schema yet: anything goes
        version, created = await bus.schemas.register("acme", ORDER, SCHEMA)
        assert (version.version, created) == (1, True)
        assert version.uri == "hybridbus:schemas/acme/com.acme.order/1"
        with pytest.raises(SchemaViolation) as caught:
            await bus.publish("acme/orders/1", order(BAD, "bad"))
        error = caught.value
        assert isinstance(error, InvalidEvent)
        assert error.code == ErrorCode.SCHEMA_VIOLATION == 1007
        assert error.path == "data.items[2].qty"
        assert str(error).startswith("data.items[2].qty: 0 is less than the minimum of 1")
        with pytest.raises(SchemaViolation, match=r"^data: 'note' is a required|^data: .*items"):
            await bus.publish("acme/orders/1", order({"note": "x"}, "missing"))
        with pytest.raises(SchemaViolation) as caught:
            await bus.publish("acme/orders/1", order({**GOOD, "extra": 1}, "closed"))
        assert caught.value.path == "data"
        await bus.publish("acme/orders/1", order(GOOD, "good"))
        await bus.publish("acme/orders/1", {"id": "other", "source": "/s", "type": "t", "data": 1})
        page = await bus.history("acme/orders/1")
        kept = {d.event.id: d.event.dataschema for d in page.deliveries}
        assert kept == {"before": None, "good": version.uri, "other": None}


async def test_every_event_of_a_batch_is_checked_and_none_published() -> None:
    async with hybridbus.open("memory://") as bus:
        await bus.schemas.register("acme", ORDER, SCHEMA)
        with pytest.raises(SchemaViolation) as caught:
            await bus.publish_many("acme/orders/2", [order(GOOD, "a"), order(BAD, "b")])
        assert "event 1 of the batch" in " ".join(caught.value.__notes__)
        assert (await bus.history("acme/orders/2")).deliveries == []
        acks = await bus.publish_many("acme/orders/2", [order(GOOD, "a"), order(GOOD, "b")])
        assert len(acks) == 2


async def test_a_tenants_schema_never_applies_to_another_tenant() -> None:
    async with hybridbus.open("memory://") as bus:
        await bus.schemas.register("acme", ORDER, SCHEMA)
        await bus.publish("globex/orders/1", order(BAD))  # globex has no schema for it
        await bus.publish("$audit/acme/x", order(BAD))  # a system topic is no tenant's
        page = await bus.history("globex/orders/1")
        assert page.deliveries[0].event.dataschema is None
        with pytest.raises(UnknownSchema):
            bus.schemas.get("globex", ORDER, "latest")
        assert [t.tenant for t in bus.schemas.types(None)] == ["acme"]
        assert bus.schemas.types("globex") == []


async def test_dataschema_chooses_the_version_and_is_kept() -> None:
    async with hybridbus.open("memory://") as bus:
        v1, _ = await bus.schemas.register("acme", ORDER, SCHEMA)
        wider = {**SCHEMA, "required": []}  # backward: a required property dropped
        v2, _ = await bus.schemas.register("acme", ORDER, wider)
        await bus.publish("acme/o", order({"note": "n"}, "latest"))  # v2 takes it
        with pytest.raises(SchemaViolation, match=v1.uri):
            await bus.publish("acme/o", order({"note": "n"}, "v1", dataschema=v1.uri))
        await bus.publish("acme/o", order({"note": "n"}, "mine", dataschema="https://x/mine"))
        page = await bus.history("acme/o")
        kept = {d.event.id: d.event.dataschema for d in page.deliveries}
        assert kept == {"latest": v2.uri, "mine": "https://x/mine"}


async def test_data_that_is_not_json_is_refused() -> None:
    async with hybridbus.open("memory://") as bus:
        await bus.schemas.register("acme", ORDER, True)
        await bus.publish("acme/o", order({"any": "thing"}))
        with pytest.raises(SchemaViolation, match="binary"):
            await bus.publish("acme/o", order(b"\x00\x01", "bin"))
        await bus.schemas.register("acme", "nothing", False)
        with pytest.raises(SchemaViolation, match=r"^data: "):
            await bus.publish("acme/o", {"id": "n", "source": "/s", "type": "nothing"})


async def test_registering_versions_and_modes() -> None:
    async with hybridbus.open("memory://") as bus:
        schemas = bus.schemas
        assert schemas.active is False
        v1, _ = await schemas.register("acme", ORDER, SCHEMA)
        assert schemas.active is True
        reordered = dict(reversed(list(SCHEMA.items())))
        assert await schemas.register("acme", ORDER, reordered) == (v1, False)  # the same one
        narrower = {**SCHEMA, "required": ["items", "note"]}
        with pytest.raises(SchemaIncompatible) as caught:
            await schemas.register("acme", ORDER, narrower)
        assert caught.value.path == "#/required/note"
        assert caught.value.code == ErrorCode.SCHEMA_INCOMPATIBLE
        info = await schemas.set_mode("acme", ORDER, "forward")
        assert (info.mode, info.versions) == ("forward", 1)
        v2, created = await schemas.register("acme", ORDER, narrower)
        assert (v2.version, created) == (2, True)
        await schemas.set_mode("acme", ORDER, "none")
        v3, _ = await schemas.register("acme", ORDER, {"type": "string"})
        assert [v.version for v in schemas.versions("acme", ORDER)] == [1, 2, 3]
        assert schemas.get("acme", ORDER, "latest") == v3
        assert schemas.get("acme", ORDER, 2) == v2
        with pytest.raises(UnknownSchema):
            schemas.get("acme", ORDER, 4)
        premode = await schemas.set_mode("acme", "com.acme.new", "full")  # before version 1
        assert (premode.mode, premode.versions, premode.uri) == ("full", 0, None)
        assert schemas.test("acme", ORDER, "text").valid
        result = schemas.test("acme", ORDER, {"items": []}, 1)
        assert result.valid and result.version == 1
        result = schemas.test("acme", ORDER, BAD, "1")
        assert (result.valid, result.path) == (False, "data.items[2].qty")


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ({"type": "nope"}, "#/type"),
        ({"$ref": "https://example.com/elsewhere.json"}, "resolve inside"),
        ({"$schema": "http://json-schema.org/draft-07/schema#"}, "2020-12"),
        ({"pattern": "("}, "regex"),
        ([1, 2], "object or a boolean"),
        ("text", "object or a boolean"),
        (_nested(1_000_000), "object or a boolean"),
        ({"items": _nested(1_000_000)}, "256 levels"),
    ],
)
async def test_schemas_that_cannot_be_used_are_refused(schema: Any, why: str) -> None:
    async with hybridbus.open("memory://") as bus:
        with pytest.raises(InvalidSchema, match=why.replace("$", r"\$")) as caught:
            await bus.schemas.register("acme", ORDER, schema)
        assert caught.value.code == ErrorCode.INVALID_SCHEMA == 1008
        for bad_type in ("a/b", "", "a b"):
            with pytest.raises(InvalidSchema):
                await bus.schemas.register("acme", bad_type, {})
        assert bus.schemas.types(None) == []


async def test_each_version_has_its_own_id() -> None:
    async with hybridbus.open("memory://") as bus:
        first = {"$id": "https://acme.example/order/1", "type": "object"}
        v1, _ = await bus.schemas.register("acme", ORDER, first)
        assert v1.uri == "https://acme.example/order/1"
        with pytest.raises(InvalidSchema, match="own"):
            await bus.schemas.register("acme", ORDER, {**first, "title": "the same $id"})
        ack_topic = "acme/o"
        await bus.publish(ack_topic, order({}))
        page = await bus.history(ack_topic)
        assert page.deliveries[0].event.dataschema == "https://acme.example/order/1"


async def test_schemas_and_modes_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'data'}"
    async with hybridbus.open(url) as bus:
        v1, _ = await bus.schemas.register("acme", ORDER, SCHEMA)
        await bus.schemas.set_mode("acme", ORDER, "full")
        await bus.schemas.set_mode("globex", "com.globex.x", "none")
    async with hybridbus.open(url) as bus:
        assert bus.schemas.active
        assert bus.schemas.get("acme", ORDER, 1) == v1
        assert bus.schemas.info("acme", ORDER).mode == "full"
        assert bus.schemas.info("globex", "com.globex.x").mode == "none"
        assert bus.groups.all("") == []  # `$schemas/...` is no consumer group
        with pytest.raises(SchemaViolation) as caught:
            await bus.publish("acme/orders/1", order(BAD))
        assert caught.value.path == "data.items[2].qty"
        with pytest.raises(SchemaIncompatible):  # full: the mode was kept
            await bus.schemas.register("acme", ORDER, {**SCHEMA, "required": []})
        v2, _ = await bus.schemas.register("acme", ORDER, {**SCHEMA, "title": "Orders"})
        assert v2.version == 2
    async with hybridbus.open(url) as bus:
        assert [v.version for v in bus.schemas.versions("acme", ORDER)] == [1, 2]


async def test_testing_deeply_nested_data_is_refused_before_the_validator() -> None:
    # A million levels crash the Rust validator (its stack): checked like an event first.
    async with hybridbus.open("memory://") as bus:
        await bus.schemas.register("acme", "tree", {"items": {"$ref": "#"}})
        result = bus.schemas.test("acme", "tree", _nested(1_000_000))
        assert (result.valid, result.path) == (False, "data")
        assert "128" in (result.error or "")
        assert bus.schemas.test("acme", "tree", _nested(100)).valid
        with pytest.raises(InvalidEvent, match="128 levels"):  # publishing: refused before too
            await bus.publish(
                "acme/t", {"id": "t", "source": "/s", "type": "tree", "data": _nested(200)}
            )
