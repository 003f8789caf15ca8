"""The consumer-group part of the OpenAPI document: `/v1/groups/...` (gateways/groups.py).

Owns: the paths, parameters and schemas of the consumer-group routes, which
`gateways.openapi.document()` merges into the one document. Must not import
the gateway: tests/gateways/test_openapi.py checks that the document and the
registered routes list the same routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from hybridbus.gateways.openapi_parts import STRING, json_answer, json_body, ref

__all__ = ["PARAMETERS", "SCHEMAS", "paths"]


_NUMBER: Final = {"type": "number"}
_COUNT: Final = {"type": "integer", "minimum": 0}
_IDS: Final = {"type": "array", "items": STRING}
_PAGE: Final = {"type": "integer", "minimum": 0, "maximum": 1000, "default": 100}

_SETTINGS: Final = {
    "type": "object",
    "description": "How the group hands out events (docs/groups.md); durations in seconds.",
    "properties": {
        "start": {
            "type": "string",
            "description": "where a new group begins: latest, earliest, or a resume token",
        },
        "ack_wait": {**_NUMBER, "exclusiveMinimum": 0},
        "redelivery": {
            "type": "object",
            "properties": {
                "base": _NUMBER,
                "factor": _NUMBER,
                "max": _NUMBER,
                "schedule": {"type": "array", "items": {**_NUMBER, "minimum": 0}},
            },
        },
        "max_deliveries": {"type": "integer", "minimum": 1},
        "ordered": {"type": "boolean"},
        "max_in_flight": {"type": "integer", "minimum": 1},
        "member_in_flight": {"type": "integer", "minimum": 1},
        "max_pending": {"type": "integer", "minimum": 1},
    },
}

_GROUP_FIELDS: Final[dict[str, Any]] = {
    "name": {**STRING, "description": "the group's name (an admin's: <tenant>/<name>)"},
    "tenant": STRING,
    "pattern": {**STRING, "description": "the absolute pattern it consumes"},
    "settings": ref("schemas", "GroupSettings"),
    "position": {**STRING, "description": "the group's cursor, as a resume token"},
    "created": _NUMBER,
    "members": {"type": "array", "items": STRING},
    "pending": {**_COUNT, "description": "events taken and not settled"},
    "leased": {**_COUNT, "description": "pending events handed to a member now"},
    "lag": {**_COUNT, "description": "log positions behind the head (an upper bound)"},
    "dead_letters": {**_COUNT, "description": "dead letters listed now"},
    "redelivered": {**_COUNT, "description": "deliveries after an event's first (since start)"},
    "acked": {**_COUNT, "description": "acked since the server started"},
    "dead": {**_COUNT, "description": "dead letters made since the server started"},
    "expired": {**_COUNT, "description": "events that expired while pending"},
}

_DEAD: Final[dict[str, Any]] = {
    "id": STRING,
    "dlq_topic": {**STRING, "description": "where its copy is: $dlq/<tenant>/<group>/…"},
    "topic": {**STRING, "description": "the original topic"},
    "offset": _COUNT,
    "reason": {**STRING, "description": "max_deliveries or term"},
    "error": STRING,
    "attempts": _COUNT,
    "first": _NUMBER,
    "last": _NUMBER,
    "time": _NUMBER,
}

SCHEMAS: Final[dict[str, Any]] = {
    "GroupSettings": _SETTINGS,
    "Group": {"type": "object", "required": list(_GROUP_FIELDS), "properties": _GROUP_FIELDS},
    "Groups": {
        "type": "object",
        "required": ["groups"],
        "properties": {"groups": {"type": "array", "items": ref("schemas", "Group")}},
    },
    "GroupDetail": {
        "type": "object",
        "required": [*_GROUP_FIELDS, "entries"],
        "properties": {
            **_GROUP_FIELDS,
            "entries": {
                "type": "array",
                "description": "pending entries, oldest first",
                "items": {
                    "type": "object",
                    "required": ["topic", "offset", "member", "attempts", "idle", "due", "error"],
                    "properties": {
                        "topic": STRING,
                        "offset": _COUNT,
                        "member": {**STRING, "description": "who holds it ('' if waiting)"},
                        "attempts": _COUNT,
                        "idle": {"type": ["number", "null"], "description": "s since delivered"},
                        "due": {"type": ["number", "null"], "description": "lease or wait end"},
                        "error": STRING,
                    },
                },
            },
        },
    },
    "Delivery": {
        "type": "object",
        "required": ["id", "attempt", "dedupe", "topic", "offset", "shard", "position", "event"],
        "properties": {
            "id": {**STRING, "description": "settle it by this id: ack, nack, extend, term"},
            "attempt": {"type": "integer", "minimum": 1},
            "dedupe": {**STRING, "description": "the same on every delivery of one event"},
            "topic": STRING,
            "offset": {"type": "integer", "minimum": 1},
            "shard": _COUNT,
            "position": {"type": "integer", "minimum": 1},
            "event": ref("schemas", "CloudEvent"),
        },
    },
    "Deliveries": {
        "type": "object",
        "required": ["deliveries"],
        "properties": {"deliveries": {"type": "array", "items": ref("schemas", "Delivery")}},
    },
    "DeadLetter": {"type": "object", "required": list(_DEAD), "properties": _DEAD},
    "DeadLetters": {
        "type": "object",
        "required": ["dead_letters", "more"],
        "properties": {
            "dead_letters": {"type": "array", "items": ref("schemas", "DeadLetter")},
            "more": {"type": "boolean", "description": "more follow: page with `after`"},
        },
    },
}

PARAMETERS: Final[dict[str, Any]] = {
    "group": {
        "name": "group",
        "in": "path",
        "required": True,
        "description": (
            "The group's name in the caller's tenant (1-128 of A-Z a-z 0-9 _ . -); an admin "
            "names it <tenant>/<name>, the slash as %2F."
        ),
        "schema": {"type": "string", "minLength": 1},
    },
    "deadLetter": {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "A dead letter's id (`id` in a listing).",
        "schema": {"type": "string", "minLength": 1},
    },
}


def _counted(name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": [name],
                    "properties": {name: _COUNT},
                }
            }
        },
    }


def _body(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The groups' request bodies may be left out (every field has a default)."""
    return json_body(properties, required, optional=True)


_DONE: Final = {"204": {"description": "Done."}}
_CHOOSE: Final = {
    "ids": {**_IDS, "minItems": 1, "description": "these dead letters"},
    "all": {"type": "boolean", "description": "every dead letter (instead of ids)"},
}


# On many nodes a group is served by its coordinator; another node redirects there.
_MOVED: Final = {
    "description": (
        "Another node coordinates this group (1405 NOT_COORDINATOR, docs/groups.md "
        "\"Many nodes\"): the same request again at `Location`, on that node. The body is the "
        "problem, with `node`."
    ),
    "headers": {
        "Location": {
            "description": "This path and query on the coordinating node.",
            "schema": {"type": "string", "format": "uri"},
        }
    },
    "content": {"application/problem+json": {"schema": ref("schemas", "Problem")}},
}


def paths(problems: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The `/v1/groups` paths; `problems(*statuses)` makes their problem responses.

    Every route of one group (`{group}` in its path) may answer 307 (`_MOVED`).
    """
    found = _paths(problems)
    for path, item in found.items():
        if "{group}" in path:
            for name, operation in item.items():
                if name != "parameters":
                    operation["responses"] = {"307": _MOVED, **operation["responses"]}
    return found


def _paths(problems: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    group = ref("parameters", "group")
    body_problems = problems(400, 404, 408, 413, 500, 503)
    settle = {**_DONE, **body_problems, **problems(409)}
    return {
        "/v1/groups": {
            "get": {
                "operationId": "groups",
                "summary": "The groups the caller may consume from or manage",
                "responses": {
                    "200": json_answer("Groups", "The groups, by name."),
                    **problems(500, 503),
                },
            },
        },
        "/v1/groups/{group}": {
            "parameters": [group],
            "put": {
                "operationId": "putGroup",
                "summary": "Create a group over an absolute pattern, or change its settings",
                "description": "Needs `manage` on the pattern. A group's pattern never changes.",
                "requestBody": {
                    **_body({"pattern": STRING, "settings": _SETTINGS}, ("pattern",)),
                    "required": True,
                },
                "responses": {
                    "201": json_answer("Group", "Created (Location: the group)."),
                    "200": json_answer("Group", "It existed: its settings are now these."),
                    **problems(400, 408, 409, 413, 500, 503),
                },
            },
            "get": {
                "operationId": "group",
                "summary": "A group and its pending entries",
                "parameters": [
                    {
                        "name": "pending",
                        "in": "query",
                        "description": "At most this many pending entries, oldest first.",
                        "schema": _PAGE,
                    }
                ],
                "responses": {
                    "200": json_answer("GroupDetail", "The group."),
                    **problems(400, 404, 500, 503),
                },
            },
            "delete": {
                "operationId": "deleteGroup",
                "summary": "Delete a group (its events stay in the log)",
                "responses": {**_DONE, **problems(400, 404, 500, 503)},
            },
        },
        "/v1/groups/{group}/seek": {
            "parameters": [group],
            "post": {
                "operationId": "seekGroup",
                "summary": "Move the group to a position or a time (replay); pending is dropped",
                "requestBody": _body(
                    {
                        "position": {**STRING, "description": "a resume token"},
                        "time": {**_NUMBER, "minimum": 0, "description": "Unix seconds"},
                    }
                ),
                "responses": {
                    "200": {
                        "description": "The group's new position.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["position"],
                                    "properties": {"position": STRING},
                                }
                            }
                        },
                    },
                    **body_problems,
                },
            },
        },
        "/v1/groups/{group}/fetch": {
            "parameters": [group],
            "post": {
                "operationId": "fetch",
                "summary": "Up to `max` deliveries, waiting up to `wait` seconds for the first",
                "description": (
                    "Joins the group for the request. Deliveries are leased until acked, nacked, "
                    "termed or `ack_wait` passes; those not written to the caller go back at once."
                ),
                "requestBody": _body(
                    {
                        "max": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
                        "wait": {"type": "number", "minimum": 0, "maximum": 30, "default": 0},
                        "member": {**STRING, "pattern": "^[A-Za-z0-9_.\\-]{1,128}$"},
                    }
                ),
                "responses": {
                    "200": json_answer(
                        "Deliveries", "The deliveries (an empty list after `wait`)."
                    ),
                    **body_problems,
                    **problems(429),
                },
            },
        },
        "/v1/groups/{group}/ack": {
            "parameters": [group],
            "post": {
                "operationId": "ack",
                "summary": "Settle deliveries (durable on the answer; settled ids: no-op)",
                "requestBody": _body({"ids": {**_IDS, "minItems": 1}}, ("ids",)),
                "responses": {**_DONE, **body_problems},
            },
        },
        "/v1/groups/{group}/nack": {
            "parameters": [group],
            "post": {
                "operationId": "nack",
                "summary": "A delivery failed: back after `delay` (default: the backoff), or dead",
                "requestBody": _body(
                    {
                        "id": STRING,
                        "delay": {"type": "number", "minimum": 0},
                        "error": {"type": "string", "maxLength": 1000},
                    },
                    ("id",),
                ),
                "responses": settle,
            },
        },
        "/v1/groups/{group}/extend": {
            "parameters": [group],
            "post": {
                "operationId": "extend",
                "summary": "Start leases over (`ack_wait` from now)",
                "requestBody": _body({"ids": {**_IDS, "minItems": 1}}, ("ids",)),
                "responses": settle,
            },
        },
        "/v1/groups/{group}/term": {
            "parameters": [group],
            "post": {
                "operationId": "term",
                "summary": "Give up on a delivery: it becomes a dead letter now",
                "requestBody": _body(
                    {"id": STRING, "reason": {"type": "string", "maxLength": 1000}}, ("id",)
                ),
                "responses": settle,
            },
        },
        "/v1/groups/{group}/dead-letters": {
            "parameters": [group],
            "get": {
                "operationId": "deadLetters",
                "summary": "The group's dead letters, oldest first",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "description": "Only those after this id: the last of the previous page.",
                        "schema": STRING,
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "At most this many.",
                        "schema": {**_PAGE, "minimum": 1},
                    },
                ],
                "responses": {
                    "200": json_answer("DeadLetters", "A page of dead letters."),
                    **problems(400, 404, 500, 503),
                },
            },
        },
        "/v1/groups/{group}/dead-letters/{id}": {
            "parameters": [group, ref("parameters", "deadLetter")],
            "get": {
                "operationId": "deadLetter",
                "summary": "A dead letter and its event as on $dlq/... (null once removed)",
                "responses": {
                    "200": {
                        "description": "The dead letter.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["dead_letter", "event"],
                                    "properties": {
                                        "dead_letter": ref("schemas", "DeadLetter"),
                                        "event": {
                                            "oneOf": [
                                                ref("schemas", "CloudEvent"),
                                                {"type": "null"},
                                            ]
                                        },
                                    },
                                }
                            }
                        },
                    },
                    **problems(400, 404, 500, 503),
                },
            },
        },
        "/v1/groups/{group}/dead-letters/replay": {
            "parameters": [group],
            "post": {
                "operationId": "replayDeadLetters",
                "summary": "Replay dead letters to their topic (everyone sees it) or the group",
                "requestBody": _body({**_CHOOSE, "to": {"enum": ["topic", "group"]}}),
                "responses": {"200": _counted("replayed", "How many."), **body_problems},
            },
        },
        "/v1/groups/{group}/dead-letters/purge": {
            "parameters": [group],
            "post": {
                "operationId": "purgeDeadLetters",
                "summary": "Remove dead letters from the list",
                "requestBody": _body(_CHOOSE),
                "responses": {"200": _counted("purged", "How many."), **body_problems},
            },
        },
    }
