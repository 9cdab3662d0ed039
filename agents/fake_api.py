"""An offline stand-in for Anthropic's Messages API, for tests and for development without a key.

It owns the fake's wire format and behaviour: ``POST /v1/messages`` answered as JSON or, with
``stream: true``, as server-sent events in the API's event sequence; errors in the API's error
body with the API's statuses; a script per persona (recognised from the system prompt) that is
deterministic for a seed; faults injected per request; a record of every request received; and
replay of a recorded session.

Theory of operation. Every request goes through one pipeline:

1. authenticate (any ``x-api-key`` or ``authorization`` header) and validate the body (400 with
   ``invalid_request_error`` for what the real API rejects up front);
2. record it (``FakeApi.requests``);
3. take the first queued fault that applies to it, if any: an error status, a delay, or a
   malformed tool input;
4. decide the reply as a complete message dict: from the replay file when one is loaded,
   otherwise from the persona's script;
5. send that message as one JSON body, or synthesise the event stream from it.

Because the stream is derived from the same message dict as the JSON answer, both forms always
agree, and a recorded session (JSONL lines ``{"request": ..., "response": ...}``) can be served
back in either form. The script's choices come from a generator seeded with the seed and a hash
of the request, so an identical request gets an identical reply however often the SDK retries it.

Control from another process: ``POST /_fake/faults`` queues faults (a JSON list of ``Fault``),
``GET /_fake/requests[?since=N]`` lists the recorded requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

JsonObject = dict[str, Any]

FaultKind = Literal[
    "rate_limit",
    "server_error",
    "overloaded",
    "delay",
    "malformed_tool_input",
    "bad_request",
    "stream_error",
    "truncated_stream",
]

ERROR_STATUS: Mapping[str, tuple[int, str]] = {
    "rate_limit": (429, "rate_limit_error"),
    "server_error": (500, "api_error"),
    "overloaded": (529, "overloaded_error"),
    "bad_request": (400, "invalid_request_error"),
}

PERSONAS = ("sarah", "jerry", "frankie")
PERSONA_PATTERN = re.compile(r"\byou are (sarah|jerry|frankie)\b", re.IGNORECASE)
UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
STREAM_CHUNK_CHARS = 12
"""Text and tool-input JSON are streamed in pieces of at most this many characters."""


class Fault(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One injected failure, used up by the first request it applies to.

    ``persona`` limits it to requests from that persona. ``retry_after`` (seconds) is sent as the
    ``retry-after`` header of an error; ``should_retry`` as ``x-should-retry``. ``seconds`` is how
    long a ``delay`` holds the response before answering normally. On a streaming request,
    ``stream_error`` sends an ``overloaded_error`` event after the first delta and
    ``truncated_stream`` ends the stream there without ``message_stop``; on a JSON request
    both answer normally.
    """

    kind: FaultKind
    persona: str | None = None
    retry_after: float | None = None
    should_retry: bool | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the fake received it."""

    index: int
    received_at: float
    """``time.monotonic()`` at arrival."""
    headers: Mapping[str, str]
    body: JsonObject
    persona: str | None
    received_wall: float = 0.0
    """``time.time()`` at arrival (for latency measured by another process)."""


class ReplayMismatch(Exception):
    """A replayed session received a request other than the recorded one."""


@dataclass
class FakeApi:
    """The fake's state: its seed, queued faults, recorded requests and an optional replay."""

    seed: int = 0
    faults: list[Fault] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    replay: list[tuple[JsonObject, JsonObject]] | None = None
    record_to: Path | None = None
    """When set, every answered request is appended as a replayable JSONL line."""
    _counter: int = 0
    _replay_position: int = 0
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def load_replay(self, path: Path) -> None:
        self.replay = list(read_session(path))

    def next_id(self) -> int:
        self._counter += 1
        return self._counter

    def take_fault(self, persona: str | None) -> Fault | None:
        for position, fault in enumerate(self.faults):
            if fault.persona is None or fault.persona == persona:
                return self.faults.pop(position)
        return None

    def close(self) -> None:
        """Release requests held by a ``delay`` fault (used at shutdown)."""
        self._closing.set()


def read_session(path: Path) -> Iterator[tuple[JsonObject, JsonObject]]:
    """The request/response pairs of a recorded session, in order."""
    for line in path.read_text().splitlines():
        if line.strip():
            pair = json.loads(line)
            yield pair["request"], pair["response"]


def session_line(request: JsonObject, response: JsonObject) -> str:
    return json.dumps({"request": request, "response": response}, sort_keys=True)


# --- errors -----------------------------------------------------------------------------------


def error_response(
    status: int,
    error_type: str,
    message: str,
    request_id: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }
    return JSONResponse(
        body, status_code=status, headers={"request-id": request_id, **(headers or {})}
    )


def fault_response(fault: Fault, request_id: str) -> JSONResponse:
    status, error_type = ERROR_STATUS[fault.kind]
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["retry-after"] = str(fault.retry_after)
    if fault.should_retry is not None:
        headers["x-should-retry"] = "true" if fault.should_retry else "false"
    message = f"injected {fault.kind}"
    return error_response(status, error_type, message, request_id, headers)


def validation_error(body: Any) -> str | None:
    """Why the real API would reject this body with a 400, or None."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["model"], str):
        return "model: Input should be a valid string"
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: must be an integer of at least 1"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    if not all(isinstance(m, dict) and m.get("role") in ("user", "assistant") for m in messages):
        return "messages: each message needs a role of user or assistant"
    if messages[0]["role"] != "user":
        return "messages: the first message must use the user role"
    tools = body.get("tools", [])
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools
    ):
        return "tools: each tool needs a name"
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in (
            "auto",
            "any",
            "tool",
            "none",
        ):
            return "tool_choice: type must be auto, any, tool or none"
        if choice["type"] == "tool" and choice.get("name") not in {t["name"] for t in tools}:
            return f"tool_choice: tool {choice.get('name')!r} not found in tools"
        if choice["type"] in ("any", "tool") and not tools:
            return "tool_choice: requires tools"
    return None


# --- reading the request ----------------------------------------------------------------------


def system_text(body: JsonObject) -> str:
    system = body.get("system", "")
    if isinstance(system, list):
        return "\n".join(b.get("text", "") for b in system if isinstance(b, dict))
    return system if isinstance(system, str) else ""


def persona_of(body: JsonObject) -> str | None:
    """The persona whose system prompt this is ("You are Sarah ..."), or None."""
    found = PERSONA_PATTERN.search(system_text(body))
    return found.group(1).lower() if found else None


def last_user_text(body: JsonObject) -> str:
    for message in reversed(body["messages"]):
        if message["role"] != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "\n".join(
                b.get("text", "")
                for b in content
                if isinstance(b, dict) and b.get("type") == "text"
            )
    return ""


def request_seed(seed: int, body: JsonObject) -> int:
    canonical = json.dumps({k: v for k, v in body.items() if k != "stream"}, sort_keys=True)
    digest = hashlib.sha256(f"{seed}\n{canonical}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# --- the scripts ------------------------------------------------------------------------------

QUESTIONS = (
    "What is the most questionable purchase you have made this year?",
    "Which hobby have you started and abandoned most often?",
    "What do your friends always tease you about?",
    "What job did you want as a child, and how close did you get?",
)
ROASTS = {
    "jerry": (
        "What is the DEAL with {thing}? Who DOES that? Am I right?",
        "So you {thing}. What are you, a golden retriever with a credit card?",
    ),
    "frankie": (
        "{thing}. You know what that says about you, don't you? Nothing anyone wants to hear.",
        "You {thing}, which is the saddest sentence ever typed on purpose.",
    ),
}
FACT_CATEGORIES = ("hobby", "habit", "work", "food", "family")


@dataclass(frozen=True)
class ThreadView:
    """What a script needs from the rendered context: who spoke last, and about what."""

    user_ids: tuple[str, ...]
    last_message_from: str | None
    last_message_id: str | None
    last_message_text: str | None
    last_tag: str | None
    unextracted: bool = False
    """A user message comes after the last fact extraction (or there was none)."""


def view_of(text: str) -> ThreadView:
    """Scan the rendered context for user ids and the last user message (best effort)."""
    tags = re.findall(r"^<([a-z_]+)>$", text, re.MULTILINE)
    blocks = re.findall(r"<user_message>\n(.*?)\n</user_message>", text, re.DOTALL)
    user_ids = tuple(dict.fromkeys(re.findall(rf"from: \"?({UUID_PATTERN})", "\n".join(blocks))))
    if not blocks:
        return ThreadView(user_ids, None, None, None, tags[-1] if tags else None)
    last = blocks[-1]
    author = re.search(rf"from: \"?({UUID_PATTERN})", last)
    event = re.search(rf"\bid: \"?({UUID_PATTERN})", last)
    said = re.search(r"text: (.*)", last)
    extracted_at = max((i for i, tag in enumerate(tags) if tag == "extract_facts"), default=-1)
    return ThreadView(
        user_ids,
        author.group(1) if author else None,
        event.group(1) if event else None,
        unquote(said.group(1).strip()) if said else None,
        tags[-1] if tags else None,
        any(tag == "user_message" for tag in tags[extracted_at + 1 :]),
    )


def unquote(text: str) -> str:
    if text.startswith('"'):
        with contextlib.suppress(ValueError):
            return str(json.loads(text))
    return text


def chosen_tool(body: JsonObject, persona: str | None, view: ThreadView) -> str | None:
    """The tool the script calls, or None for a plain text reply: Sarah extracts facts while a
    person's message came after her last extraction, then asks; the comedians roast."""
    names = [t["name"] for t in body.get("tools", [])]
    choice = body.get("tool_choice") or {"type": "auto"}
    if choice["type"] == "tool":
        return str(choice["name"])
    if not names or choice["type"] == "none":
        return None
    if persona == "sarah":
        if view.unextracted and "extract_facts" in names:
            return "extract_facts"
        if view.user_ids and "ask_user_about_themselves" in names:
            return "ask_user_about_themselves"
        if "do_nothing" in names:
            return "do_nothing"
    if persona in ("jerry", "frankie") and "roast_user" in names:
        return "roast_user"
    return str(names[0])


def scripted_input(
    tool: str, persona: str | None, view: ThreadView, schema: JsonObject, rng: random.Random
) -> JsonObject:
    subject = view.last_message_from or (view.user_ids[-1] if view.user_ids else None)
    thing = (view.last_message_text or "talk to strangers on the internet")[:120].rstrip(".!?")
    if tool == "ask_user_about_themselves" and subject:
        return {"subject": subject, "question": rng.choice(QUESTIONS)}
    if tool == "extract_facts" and subject and view.last_message_id:
        fact = {
            "source_event": view.last_message_id,
            "subject": subject,
            "predicate": "says",
            "object": thing[:200] or "something",
            "category": rng.choice(FACT_CATEGORIES),
            "confidence": 0.8,
            "disputed": False,
        }
        return {"facts": [fact]}
    if tool == "roast_user" and subject:
        lines = ROASTS.get(persona or "jerry", ROASTS["jerry"])
        return {"subject": subject, "roast": rng.choice(lines).format(thing=thing)}
    if tool == "do_nothing":
        return {}
    example = schema_example(schema, schema, rng, subject)
    return example if isinstance(example, dict) else {}


def schema_example(
    schema: JsonObject, root: JsonObject, rng: random.Random, subject: str | None
) -> Any:
    """A value that satisfies a (simple) JSON schema, for tools without a script."""
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return schema_example(root.get("$defs", {}).get(name, {}), root, rng, subject)
    kind = schema.get("type")
    if kind == "object":
        properties: JsonObject = schema.get("properties", {})
        return {
            key: schema_example(sub, root, rng, subject) for key, sub in sorted(properties.items())
        }
    if kind == "array":
        return [schema_example(schema.get("items", {}), root, rng, subject)]
    if kind == "number":
        return round(rng.uniform(0.1, 1.0), 1)
    if kind == "integer":
        return rng.randint(0, 9)
    if kind == "boolean":
        return False
    return subject or f"value-{rng.randint(0, 999)}"


def malformed(tool_input: JsonObject) -> JsonObject:
    """A tool input that is valid JSON but breaks the tool's schema."""
    return {"unexpected": True, **dict.fromkeys(tool_input, 42)}


def scripted_message(fake: FakeApi, body: JsonObject, corrupt_input: bool) -> JsonObject:
    persona = persona_of(body)
    rng = random.Random(request_seed(fake.seed, body))
    view = view_of(last_user_text(body))
    tool = chosen_tool(body, persona, view)
    content: list[JsonObject]
    if tool is None:
        content = [{"type": "text", "text": f"({persona or 'assistant'}) {rng.choice(QUESTIONS)}"}]
        stop_reason = "end_turn"
    else:
        schema = next(t for t in body["tools"] if t["name"] == tool).get("input_schema", {})
        tool_input = scripted_input(tool, persona, view, schema, rng)
        if corrupt_input:
            tool_input = malformed(tool_input)
        content = [{"type": "tool_use", "id": "", "name": tool, "input": tool_input}]
        stop_reason = "tool_use"
    return {
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {},
    }


def finish_message(message: JsonObject, body_bytes: int, number: int) -> JsonObject:
    """Give a scripted or replayed message fresh ids and a usage estimate."""
    done: JsonObject = json.loads(json.dumps(message))
    done["id"] = f"msg_fake_{number}"
    for index, block in enumerate(done["content"]):
        if block["type"] == "tool_use":
            block["id"] = f"toolu_fake_{number}_{index}"
    output_chars = len(json.dumps(done["content"]))
    done["usage"] = {
        "input_tokens": max(1, body_bytes // 4),
        "output_tokens": max(1, output_chars // 4),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    return done


# --- streaming --------------------------------------------------------------------------------


def chunks(text: str, size: int = STREAM_CHUNK_CHARS) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def stream_events(message: JsonObject) -> Iterator[tuple[str, JsonObject]]:
    """The event sequence the API sends for ``message``: (event type, data) pairs."""
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening: JsonObject = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in chunks(block["text"])]
        else:
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            encoded = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in chunks(encoded)]
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opening},
        )
        for delta in deltas:
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
    )
    yield "message_stop", {"type": "message_stop"}


async def sse_payloads(message: JsonObject, fault: Fault | None) -> AsyncIterator[JsonObject]:
    cut = fault is not None and fault.kind in ("stream_error", "truncated_stream")
    for event, data in stream_events(message):
        yield {"event": event, "data": json.dumps(data)}
        if cut and event == "content_block_delta":
            break
    if fault is not None and fault.kind == "stream_error":
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        yield {"event": "error", "data": json.dumps(error)}


# --- the HTTP app -----------------------------------------------------------------------------


def reply_for(fake: FakeApi, body: JsonObject, corrupt_input: bool) -> JsonObject:
    if fake.replay is None:
        return scripted_message(fake, body, corrupt_input)
    position = fake._replay_position
    if position >= len(fake.replay):
        raise ReplayMismatch(f"the recorded session has only {len(fake.replay)} requests")
    recorded_request, recorded_response = fake.replay[position]
    if comparable(recorded_request) != comparable(body):
        raise ReplayMismatch(f"request {position} differs from the recorded one")
    fake._replay_position += 1
    return recorded_response


def comparable(body: JsonObject) -> JsonObject:
    return {k: v for k, v in body.items() if k != "stream"}


async def create_message(request: Request) -> Response:
    arrived, arrived_wall = time.monotonic(), time.time()  # before the body is read and checked
    fake: FakeApi = request.app.state.fake
    number = fake.next_id()
    request_id = f"req_fake_{number}"
    if "x-api-key" not in request.headers and "authorization" not in request.headers:
        return error_response(401, "authentication_error", "missing API key", request_id)
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        return error_response(400, "invalid_request_error", "body is not JSON", request_id)
    problem = validation_error(body)
    if problem is not None:
        return error_response(400, "invalid_request_error", problem, request_id)
    persona = persona_of(body)
    recorded = RecordedRequest(
        len(fake.requests), arrived, dict(request.headers), body, persona, arrived_wall
    )
    fake.requests.append(recorded)
    fault = fake.take_fault(persona)
    if fault is not None and fault.kind in ERROR_STATUS:
        return fault_response(fault, request_id)
    if fault is not None and fault.kind == "delay":
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fake._closing.wait(), fault.seconds)
    corrupt = fault is not None and fault.kind == "malformed_tool_input"
    try:
        message = finish_message(reply_for(fake, body, corrupt), len(raw), number)
    except ReplayMismatch as mismatch:
        return error_response(400, "invalid_request_error", str(mismatch), request_id)
    if fake.record_to is not None:
        with fake.record_to.open("a") as log:
            log.write(session_line(comparable(body), message) + "\n")
    headers = {"request-id": request_id}
    if body.get("stream"):
        return EventSourceResponse(sse_payloads(message, fault), headers=headers, ping=None)
    return JSONResponse(message, headers=headers)


async def queue_faults(request: Request) -> Response:
    fake: FakeApi = request.app.state.fake
    try:
        faults = msgspec.json.decode(await request.body(), type=list[Fault])
    except msgspec.ValidationError as error:
        return error_response(400, "invalid_request_error", str(error), "req_fake_control")
    fake.inject(*faults)
    return JSONResponse({"queued": len(fake.faults)})


def _since(request: Request) -> int:
    """``?since=N``: the requests from index N on (all of them when absent or malformed)."""
    try:
        return max(int(request.query_params.get("since", "0")), 0)
    except ValueError:
        return 0


async def list_requests(request: Request) -> Response:
    fake: FakeApi = request.app.state.fake
    return JSONResponse(
        [
            {"index": r.index, "persona": r.persona, "received": r.received_wall, "body": r.body}
            for r in fake.requests[_since(request) :]
        ]
    )


async def not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, "not_found_error", f"no route {request.url.path}", "req_fake_404")


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(405, "invalid_request_error", "method not allowed", "req_fake_405")


def create_app(fake: FakeApi) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/messages", create_message, methods=["POST"]),
            Route("/_fake/faults", queue_faults, methods=["POST"]),
            Route("/_fake/requests", list_requests, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: method_not_allowed},
    )
    app.state.fake = fake
    return app


@contextlib.asynccontextmanager
async def serve(fake: FakeApi, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run the fake on the current event loop; yields its base URL (``http://host:port``)."""
    fake._closing = asyncio.Event()
    config = uvicorn.Config(
        create_app(fake), host=host, port=port, log_level="warning", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the fake API server stopped while starting")
            await asyncio.sleep(0.01)
        bound_port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound_port}"
    finally:
        fake.close()
        server.should_exit = True
        await task
