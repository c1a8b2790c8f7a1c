"""The numbers and schemas a request body may carry, checked when a file is validated.

OpenAI refuses these up front; here they would otherwise reach the engine and fail there for the
whole batch: vLLM serializes sampling settings with msgspec, which overflows past 64 bits, a NaN
logit bias poisons the logits of every request sharing the step, and a schema whose `$ref` points
nowhere fails whoever reads it. Pure: a parsed body in, its problems out.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012, specification_with

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# API limit: OpenAI's logit_bias values lie in [-100, 100].
LOGIT_BIAS_LIMIT = 100
# Counts and sizes: far past any real value, well inside what every layer below can hold.
_INT32_FIELDS = ("n", "best_of", "max_tokens", "max_completion_tokens", "max_output_tokens", "min_tokens",
                 "top_k", "top_logprobs", "logprobs", "dimensions")


@dataclass(frozen=True)
class BodyProblem:
    param: str  # OpenAI's spelling of the field's path within the body
    message: str


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int too, and is not a number here


def _non_finite(value: Any, path: str) -> Iterator[str]:
    """Paths of NaN and ±Infinity (which Python's JSON reader accepts and JSON does not); iterative,
    since a body may nest as deep as the reader allowed."""
    stack = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            yield where
        elif isinstance(node, dict):
            stack.extend((item, f"{where}.{key}" if where else str(key)) for key, item in node.items())
        elif isinstance(node, list):
            stack.extend((item, f"{where}[{index}]") for index, item in enumerate(node))


def dangling_ref(schema: dict[str, Any]) -> str | None:
    """The first `$ref` of a valid JSON Schema that resolves to nothing (a missing definition, another
    document: nothing is fetched), or None."""
    specification = specification_with(validator_for(schema).META_SCHEMA.get("$schema", ""), default=DRAFT202012)
    stack = [(schema, Registry().resolver_with_root(specification.create_resource(schema)))]
    while stack:
        node, resolver = stack.pop()
        if isinstance(node, dict):
            if node is not schema and isinstance(node.get("$id"), str):
                resolver = resolver.in_subresource(specification.create_resource(node))
            if isinstance(ref := node.get("$ref"), str):
                try:
                    resolver.lookup(ref)
                except Unresolvable:
                    return ref
            stack.extend((item, resolver) for item in node.values())
        elif isinstance(node, list):
            stack.extend((item, resolver) for item in node)
    return None


def dangling_ref_message(ref: str) -> str:
    return f"its '$ref' '{ref}' points to nothing in the schema (definitions must be inside it)"


def _dangling_ref_problem(schema: Any) -> str | None:
    """Only for a valid schema: generation refuses an invalid one as that line's 400, naming the rule."""
    if not isinstance(schema, dict):
        return None
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError:
        return None
    ref = dangling_ref(schema)
    return dangling_ref_message(ref) if ref is not None else None


def _structured_schema(body: dict[str, Any]) -> tuple[str, Any] | None:
    """Where a chat (`response_format`) or Responses (`text.format`) body puts its answer's schema."""
    holder, path = body.get("response_format"), "response_format.json_schema"
    if isinstance(holder, dict):
        holder = holder.get("json_schema")
    else:
        text = body.get("text")
        holder = text.get("format") if isinstance(text, dict) else None
        path = "text.format"
    if isinstance(holder, dict) and "schema" in holder:
        return f"{path}.schema", holder["schema"]
    return None


def body_problems(body: Any) -> list[BodyProblem]:
    """Every number outside what OpenAI accepts, and an answer schema that cannot be used."""
    if not isinstance(body, dict):
        return []
    problems = [BodyProblem(path, "NaN and Infinity are not JSON numbers") for path in _non_finite(body, "")]
    seed = body.get("seed")
    if _is_int(seed) and not INT64_MIN <= seed <= INT64_MAX:
        problems.append(BodyProblem("seed", f"must be a 64-bit integer, between {INT64_MIN} and {INT64_MAX}"))
    for name in _INT32_FIELDS:
        value = body.get(name)
        if _is_int(value) and not INT32_MIN <= value <= INT32_MAX:
            problems.append(BodyProblem(name, f"must be an integer between {INT32_MIN} and {INT32_MAX}"))
    bias = body.get("logit_bias")
    if isinstance(bias, dict):
        for token, value in bias.items():
            if not (token.isascii() and token.isdigit() and int(token) <= INT32_MAX):
                problems.append(BodyProblem(f"logit_bias.{token}", "keys must be token ids"))
            elif isinstance(value, int | float) and math.isfinite(value) and abs(value) > LOGIT_BIAS_LIMIT:
                problems.append(BodyProblem(f"logit_bias.{token}",
                                            f"must be between -{LOGIT_BIAS_LIMIT} and {LOGIT_BIAS_LIMIT}"))
    if (found := _structured_schema(body)) is not None and (problem := _dangling_ref_problem(found[1])) is not None:
        problems.append(BodyProblem(found[0], problem))
    return problems
