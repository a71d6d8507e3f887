"""The OpenAPI 3 document, generated from the routes and their marshmallow schemas."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES

from library.schemas import (
    BookSchema,
    ProblemSchema,
    book_patch_schema,
    member_patch_schema,
)
from library.web.http import ROLE_NAMES

log = logging.getLogger("library_api")


def openapi_spec(app: Flask) -> bytes:
    """The OpenAPI 3 document, generated from the routes and their marshmallow schemas."""
    cached = app.extensions.get("library_openapi")
    if cached is not None:
        return cached
    from apispec import APISpec
    from apispec.ext.marshmallow import MarshmallowPlugin

    spec = APISpec("library_api", "1.0.0", "3.0.3", plugins=[MarshmallowPlugin()])
    spec.components.schema("Problem", schema=ProblemSchema)
    spec.components.schema("Book", schema=BookSchema)
    spec.components.schema("BookPatch", schema=book_patch_schema)
    spec.components.schema("MemberPatch", schema=member_patch_schema)
    spec.components.security_scheme(
        "bearerAuth",
        {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A token from POST /auth/login."},
    )
    for rule in app.url_map.iter_rules():
        view_fn = app.view_functions[rule.endpoint]
        doc = getattr(view_fn, "openapi", None)
        if doc is None or (rule.endpoint == "members.register" and app.config["REGISTRATION"] != "open"):
            continue  # a closed registration is not offered
        path = str(rule.rule)
        params = []
        for arg in rule.arguments:
            path = path.replace(f"<id:{arg}>", f"{{{arg}}}")
            params.append({"in": "path", "name": arg, "required": True, "schema": {"type": "integer", "minimum": 1}})
        operations = {}
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operations[method.lower()] = _operation(view_fn, doc, params)
        spec.path(path=path, operations=operations)
    app.extensions["library_openapi"] = orjson.dumps(spec.to_dict())
    return app.extensions["library_openapi"]


def _operation(view_fn: Callable[..., Any], doc: dict[str, Any], params: list[dict[str, Any]]) -> dict[str, Any]:
    status = doc.get("status", 200)
    response = doc.get("response")
    content = {"application/json": {"schema": response}} if response else None
    op: dict[str, Any] = {
        "summary": (view_fn.__doc__ or "").strip().splitlines()[0],
        "operationId": view_fn.__name__,
        "parameters": list(params),
        "responses": {
            str(status): {"description": HTTP_STATUS_CODES[status], **({"content": content} if content else {})}
        },
    }
    for code, description in doc.get("also", {}).items():  # a second success, such as an upsert's update
        op["responses"][str(code)] = {"description": description, "content": content}
    if doc.get("query"):
        op["parameters"].append({"in": "query", "schema": doc["query"]})
    if doc.get("upload"):
        binary = {
            "type": "object",
            "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}, **doc.get("upload_fields", {})},
        }
        op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": binary}}}
    if doc.get("body"):
        body = "BookPatch" if doc.get("partial") else doc["body"]
        required = not doc.get("body_optional")
        op["requestBody"] = {"required": required, "content": {"application/json": {"schema": body}}}
    errors = list(doc.get("errors", ()))
    role = doc.get("auth")
    if role:
        op["security"] = [{"bearerAuth": []}]
        op["description"] = f"Needs a bearer token: {ROLE_NAMES[role]}."
        errors = [401, 403, *errors]
    for code in sorted(set(errors)):
        op["responses"][str(code)] = {
            "description": HTTP_STATUS_CODES[code],
            "content": {"application/problem+json": {"schema": "Problem"}},
        }
    return op
