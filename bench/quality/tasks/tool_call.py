"""``tool_call``: a request becomes one function call with the right arguments.

Rows are OpenAI's tool format: ``tools`` (function definitions) beside ``messages``, and an
assistant message whose ``tool_calls`` hold ``{"id", "type": "function", "function": {"name",
"arguments"}}`` with ``arguments`` a JSON string. The function names are the task's fixed
vocabulary (like a classifier's labels); the values in the arguments and the request wordings
are split between training and held-out rows.

Two variants, because a template decides whether tool calls reach the model at all:

- ``tool_call`` (:data:`TASK`): the native format above. Only templates that render ``tools``
  and ``tool_calls`` (Qwen2.5, Llama 3.1, Mistral v0.3) train on it. SmolLM2's ChatML template
  renders neither and writes ``message['content']``, which a tool-call message lacks: openft's
  validation refuses such rows for that model.
- ``tool_call_text`` (:data:`TEXT_TASK`): the same calls, the functions listed in the system
  prompt and the call written as JSON text ``{"name", "arguments"}``: trainable on any model.

Either way a reply is scored through :func:`parse_tool_call`, which reads both a ``tool_calls``
list and text holding the JSON object, so a model may answer in whichever shape it serves.
"""

from __future__ import annotations

import dataclasses
import json
import random
import string
from collections.abc import Mapping
from typing import Any

from bench.quality.tasks.base import Answer, Drawn, Message, Pools, Task, compact
from bench.quality.tasks.vocab import (
    HELDOUT_PEOPLE,
    HELDOUT_PLACES,
    HELDOUT_PRODUCTS,
    TRAIN_PEOPLE,
    TRAIN_PLACES,
    TRAIN_PRODUCTS,
)


def _function(name: str, description: str, **params: str) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object",
                       "properties": {p: {"type": t} for p, t in params.items()},
                       "required": list(params)}}}


TOOLS = [
    _function("get_weather", "Current weather in a city", city="string"),
    _function("send_money", "Send money to a person", to="string", amount="integer"),
    _function("add_to_cart", "Add a product to the cart", product="string", qty="integer"),
]
NATIVE_SYSTEM = "Use a tool to answer."
TEXT_SYSTEM = ("Call one function: get_weather(city), send_money(to, amount), "
               'add_to_cart(product, qty). Answer with JSON {"name":...,"arguments":{...}} only.')

TRAIN = Pools(
    values={"name": TRAIN_PEOPLE, "city": TRAIN_PLACES, "product": TRAIN_PRODUCTS},
    templates={
        "get_weather": ("What's the weather like in {city}?", "Is it raining in {city} now?",
                        "Weather for {city}, please."),
        "send_money": ("Send {amount} dollars to {name}.", "Transfer {amount} to {name}, please.",
                       "Pay {name} {amount} dollars."),
        "add_to_cart": ("Add {qty} {product} to my cart.", "Put {qty} {product} in the basket.",
                        "I want to buy {qty} {product}."),
    },
)
HELDOUT = Pools(
    values={"name": HELDOUT_PEOPLE, "city": HELDOUT_PLACES, "product": HELDOUT_PRODUCTS},
    templates={
        "get_weather": ("Do I need a coat in {city} today?", "Tell me the forecast for {city}.",
                        "Will it be sunny in {city} this afternoon?",
                        "How cold is it over in {city}?"),
        "send_money": ("I owe {name} {amount} bucks, settle it for me.",
                       "Wire {amount} dollars over to {name}.",
                       "{name} lent me {amount} dollars, pay them back.",
                       "Move {amount} dollars from my account to {name}."),
        "add_to_cart": ("Could you throw {qty} {product} into my order?",
                        "My order needs {qty} {product} as well.",
                        "Grab {qty} {product} for me.",
                        "I'll take {qty} {product} too."),
    },
)


def _call(rng: random.Random, pools: Pools) -> tuple[str, dict[str, Any], str]:
    """A function, its arguments and the request asking for it."""
    name = rng.choice(list(pools.templates))
    slots: dict[str, Any] = {
        "city": rng.choice(pools.values["city"]), "name": rng.choice(pools.values["name"]),
        "product": rng.choice(pools.values["product"]), "amount": rng.randint(5, 500),
        "qty": rng.randint(2, 9)}
    arguments = {
        "get_weather": {"city": slots["city"]},
        "send_money": {"to": slots["name"], "amount": slots["amount"]},
        "add_to_cart": {"product": slots["product"], "qty": slots["qty"]},
    }[name]
    return name, arguments, rng.choice(pools.templates[name]).format(**slots)


def draw_native(rng: random.Random, pools: Pools) -> Drawn:
    name, arguments, request = _call(rng, pools)
    # Nine alphanumerics: the id shape Mistral v0.3's template insists on, fine for the others.
    call_id = "".join(rng.choices(string.ascii_letters + string.digits, k=9))
    answer: Message = {"role": "assistant", "tool_calls": [{
        "id": call_id, "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)}}]}
    return Drawn(prompt=[{"role": "system", "content": NATIVE_SYSTEM},
                         {"role": "user", "content": request}],
                 answer=answer, expected={"name": name, "arguments": arguments}, tools=TOOLS)


def draw_text(rng: random.Random, pools: Pools) -> Drawn:
    name, arguments, request = _call(rng, pools)
    expected = {"name": name, "arguments": arguments}
    return Drawn(prompt=[{"role": "system", "content": TEXT_SYSTEM},
                         {"role": "user", "content": request}],
                 answer={"role": "assistant", "content": compact(expected)}, expected=expected)


def parse_tool_call(answer: Answer) -> dict[str, Any] | None:
    """The first call in ``answer`` as ``{"name": str, "arguments": dict}``, else None.

    ``answer`` may be a ``tool_calls`` list (dicts, or the SDK's objects), one call, or text
    holding a JSON object ``{"name", "arguments"}`` (``"parameters"`` too, Llama 3.1's key),
    possibly wrapped in other text such as ``<tool_call>`` tags.

    >>> parse_tool_call([{"id": "a", "type": "function",
    ...                   "function": {"name": "f", "arguments": '{"x": 1}'}}])
    {'name': 'f', 'arguments': {'x': 1}}
    >>> parse_tool_call('<tool_call>\\n{"name": "f", "arguments": {"x": 1}}\\n</tool_call>')
    {'name': 'f', 'arguments': {'x': 1}}
    >>> parse_tool_call("It is sunny.") is None
    True
    """
    if isinstance(answer, str):
        return _call_in_text(answer)
    if isinstance(answer, list):
        return parse_tool_call(_as_dict(answer[0])) if answer else None
    if not isinstance(answer, Mapping):
        return None
    call = _as_dict(answer.get("function", answer))
    name, arguments = call.get("name"), call.get("arguments", call.get("parameters"))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    return {"name": name, "arguments": arguments}


def _as_dict(value: Any) -> Any:
    """An SDK object (pydantic) as a dict; anything else unchanged."""
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


def _call_in_text(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` that reads as a call."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict) and (call := parse_tool_call(value)) is not None:
            return call
        start = text.find("{", start + 1)
    return None


def well_formed(answer: Answer) -> bool:
    """A call to one of the defined functions, whatever its arguments."""
    call = parse_tool_call(answer)
    return call is not None and call["name"] in {t["function"]["name"] for t in TOOLS}


def score(answer: Answer, expected: Any) -> float:
    """1.0 when the function name and the parsed arguments equal the expected call."""
    return float(parse_tool_call(answer) == expected)


TASK = Task(name="tool_call", method="supervised",
            metric="function name and parsed arguments exactly", form="a call to a defined tool",
            train_pools=TRAIN, heldout_pools=HELDOUT, draw=draw_native, score=score,
            well_formed=well_formed)
TEXT_TASK = dataclasses.replace(TASK, name="tool_call_text", draw=draw_text)
"""The same calls written as JSON text, for templates that render no tools."""
