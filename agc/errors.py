"""The base class of errors that are the user's to fix (a bad file, option or profile).

The CLI prints them as one clear line, without a traceback, and exits with status 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class UserError(Exception):
    """Bad input: the message names the file or option and says what to do."""


def describe_schema_error(error: Any, root: Mapping[str, Any] | None = None) -> str:
    """``key.path: what is wrong`` for one ``jsonschema.ValidationError``.

    Schemas may say what a value should look like with ``x-expected`` ("a size such as 2GB");
    ``root`` (the whole schema) lets a ``required`` error of a conditional rule find the
    description of the missing key.
    """
    path = ".".join(str(p) for p in error.absolute_path)
    where = f"{path}." if path else ""
    schema = error.schema
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"{where}{unknown[0]}: unknown key" + (
            f" (allowed here: {', '.join(allowed)})" if allowed else ""
        )
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance][0]
        hint = schema.get("properties", {}).get(missing, {}).get("description", "")
        if not hint and root is not None:  # conditional rules do not repeat the descriptions
            node: Any = root
            for part in error.absolute_path:
                node = node.get("properties", {}).get(str(part), {})
            hint = node.get("properties", {}).get(missing, {}).get("description", "")
        return f"{where}{missing}: required" + (f" ({hint})" if hint else "")
    key = path or "(top level)"
    expected = schema.get("x-expected")
    if error.validator == "enum":
        choices = ", ".join(str(c) for c in schema["enum"] if c is not None)
        return f"{key}: {error.instance!r} is not one of {choices}"
    if expected:
        return f"{key}: {error.instance!r} is not {expected}"
    if error.validator == "type":
        types = error.validator_value
        types = " or ".join(types) if isinstance(types, list) else types
        return f"{key}: expected {types}, got {error.instance!r}"
    if error.validator in ("oneOf", "anyOf") and schema.get("description"):
        return f"{key}: {error.instance!r} is not valid; expected {schema['description']}"
    return f"{key}: {error.message}"
