"""OpenAI's request bodies read into what the engine runs: a `Plan` of prompts (token
ids) and one SampleConfig, checked as the CLI checks its flags, with every refusal an
ApiError naming the field in OpenAI's terms. Also the chat template that turns messages
into a base model's prompt. Knows nothing of HTTP transport or of the batch.

A field gptcli does not support is refused by name, never ignored; a field at the value
that means "off" (top_k -1, presence_penalty 0, ...) is accepted, as clients send them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gptcli import tokenizer
from gptcli.config import SampleConfig
from gptcli.errors import SettingError, UsageError

MAX_N = 64  # outputs one request may ask for
MAX_STOPS = 16
MAX_TOP_LOGPROBS = 20

# gptcli's setting names as the API spells them (errors name the field the client sent)
API_NAMES = {"max_new_tokens": "max_tokens", "num_samples": "n", "num_return": "n"}
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "num_beams", "length_penalty",
            "early_stopping")
COMMON = ("model", "max_tokens", "n", "stop", "stream", "stream_options", "user", "truncate", *SAMPLING)
COMPLETION_FIELDS = (*COMMON, "prompt", "echo", "logprobs")
CHAT_FIELDS = (*COMMON, "messages", "max_completion_tokens", "logprobs", "top_logprobs")
# fields accepted only at the value that changes nothing
NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "best_of": (1,), "suffix": ("",),
           "logit_bias": ({},), "parallel_tool_calls": (False,), "tools": ([],), "response_format": ({"type": "text"},)}

DEFAULT_TEMPLATE = {"system": "{content}\n\n", "user": "User: {content}\n", "assistant": "Assistant: {content}\n",
                    "generation": "Assistant:", "stop": ["\nUser:"]}


class ApiError(Exception):
    """A refusal in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.kind = kind or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                             408: "timeout_error", 413: "invalid_request_error", 429: "rate_limit_error",
                             503: "server_error"}.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Plan:
    """What one request asks for: each prompt's ids (and the text its seed is made
    from), `sample` for every output, n outputs per prompt."""

    prompts: list[list[int]]
    texts: list[str]  # the prompt as text: echoed, and what each output's seed is derived from
    sample: SampleConfig
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None  # None: no logprobs; else the top alternatives per token (0: the chosen only)
    stops: tuple[str, ...]


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def completion_plan(body: dict, engine, model_id: str) -> Plan:
    """A /v1/completions body as a Plan."""
    _known(body, COMPLETION_FIELDS, model_id)
    texts, prompts = prompt_ids(_field(body, "prompt", required=True), engine, _truncate(body), _max_tokens(body))
    logprobs = _opt(body, "logprobs", int)
    if logprobs is not None and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {logprobs}", "logprobs")
    return _plan(body, engine, prompts, texts, logprobs, echo=_opt(body, "echo", bool) or False, extra_stops=())


def chat_plan(body: dict, engine, model_id: str, template: dict) -> Plan:
    """A /v1/chat/completions body as a Plan: the messages rendered by the template."""
    _known(body, CHAT_FIELDS, model_id)
    if body.get("max_completion_tokens") is not None:
        if body.get("max_tokens") is not None:
            raise ApiError(400, "give max_tokens or max_completion_tokens, not both", "max_completion_tokens")
        _opt(body, "max_completion_tokens", int)
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    prompt = render_chat(_field(body, "messages", required=True), template)
    texts, prompts = prompt_ids(prompt, engine, _truncate(body), _max_tokens(body), param="messages")
    logprobs = None
    if _opt(body, "logprobs", bool):
        logprobs = _opt(body, "top_logprobs", int) or 0
        if not 0 <= logprobs <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", "top_logprobs")
    elif body.get("top_logprobs") not in (None, 0):
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    return _plan(body, engine, prompts, texts, logprobs, echo=False, extra_stops=tuple(template["stop"]))


def render_chat(messages, template: dict) -> str:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise ApiError(400, f"messages[{i}] needs a role of system, user or assistant", "messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", "messages")
        role = "system" if m["role"] == "developer" else m["role"]
        parts.append(template[role].replace("{content}", content))
    return "".join(parts) + template["generation"]


def load_template(path: Path | None) -> dict:
    """The chat template: a JSON object of system, user, assistant (each with {content}),
    generation (what starts the reply) and stop (strings that end it)."""
    if path is None:
        return DEFAULT_TEMPLATE
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--chat-template {path}: cannot read it as JSON ({e})") from None
    if not isinstance(given, dict) or set(given) - set(DEFAULT_TEMPLATE):
        raise UsageError(f"--chat-template {path}: an object with keys {', '.join(DEFAULT_TEMPLATE)}")
    template = {**DEFAULT_TEMPLATE, **given}
    if not all(isinstance(template[k], str) for k in ("system", "user", "assistant", "generation")) or not (
            isinstance(template["stop"], list) and all(isinstance(s, str) and s for s in template["stop"])):
        raise UsageError(f"--chat-template {path}: system, user, assistant and generation are strings; "
                         "stop is a list of non-empty strings")
    return template


# -- the parts ---------------------------------------------------------------------------


def only(body: dict, fields: tuple[str, ...]) -> None:
    """Refuse a field not in `fields`, by name."""
    for name in body:
        if name not in fields:
            raise ApiError(400, f"{name} is not a field of this endpoint (it takes {', '.join(fields)})", name,
                           "unsupported_field")


def check_text(text: str, param: str) -> None:
    """Text the tokenizer can take (the CLI's rule: valid UTF-8, no lone surrogates)."""
    try:
        tokenizer.check_text(text, param)
    except UsageError as e:
        raise ApiError(400, str(e), param) from None


def _known(body: dict, fields: tuple[str, ...], model_id: str) -> None:
    for name, value in body.items():
        if name in NEUTRAL:
            if value is not None and value not in NEUTRAL[name]:
                raise ApiError(400, f"{name} is not supported by gptcli serve", name, "unsupported_field")
        elif name not in fields:
            raise ApiError(400, f"{name} is not a field gptcli serve supports", name, "unsupported_field")
    _opt(body, "user", str)
    model = _opt(body, "model", str)
    if model is not None and model != model_id:
        raise ApiError(404, f"the model {model!r} does not exist: this server serves {model_id!r}", "model",
                       "model_not_found")


def _field(body: dict, name: str, required: bool = False):
    if required and body.get(name) is None:
        raise ApiError(400, f"{name} is required", name, "missing_field")
    return body.get(name)


def _opt(body: dict, name: str, kind: type):
    """body[name] if given (None: not given), of the JSON type `kind`."""
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, bool) if kind is bool else (
        isinstance(value, kind) and not isinstance(value, bool) or kind is float and isinstance(value, int)
        and not isinstance(value, bool))
    if not ok:
        names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "an object"}
        raise ApiError(400, f"{name} must be {names[kind]}, got {json.dumps(value)[:40]}", name, "invalid_type")
    return value


def _max_tokens(body: dict) -> int:
    value = _opt(body, "max_tokens", int)
    return 16 if value is None else value  # OpenAI's default


def _truncate(body: dict) -> bool:
    return bool(_opt(body, "truncate", bool))


def prompt_ids(prompt, engine, truncate: bool, max_tokens: int, param: str = "prompt",
               ) -> tuple[list[str], list[list[int]]]:
    """Each prompt's text and ids: a string, a list of strings, a list of token ids, or
    a list of such lists."""
    vocab = engine.config.vocab_size
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(is_token_id(t) for t in prompt)):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt or len(prompt) > MAX_N:
        raise ApiError(400, f"prompt must be a string, a list of 1 to {MAX_N} strings, or token ids", "prompt")
    texts, ids = [], []
    for p in prompt:
        if isinstance(p, str):
            check_text(p, param)
            tokens = engine.tokenizer.encode(p)
            texts.append(p)
        elif isinstance(p, list) and all(is_token_id(t) for t in p):
            if any(not 0 <= t < vocab for t in p):
                raise ApiError(400, f"token ids must be between 0 and {vocab - 1}", "prompt")
            tokens, text = list(p), engine.tokenizer.decode(p)
            texts.append(text)
        else:
            raise ApiError(400, "prompt must be a string, a list of strings, or lists of token ids", "prompt")
        tokens = tokens or [engine.tokenizer.eot_id]  # an empty prompt starts a new document
        _fits(len(tokens), max_tokens, engine, truncate)
        ids.append(tokens[-engine.config.block_size:])
    return texts, ids


def is_token_id(t) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _fits(prompt_tokens: int, max_tokens: int, engine, truncate: bool) -> None:
    """A prompt and max_tokens within the context, unless truncate asks for what generate
    does: keep the prompt's last block_size tokens and slide the window. (A recurrent
    model generates past block_size, but reads prompts of at most that many tokens.)"""
    block = engine.config.block_size
    if truncate:
        return
    if engine.context_limit is None:
        if prompt_tokens <= block:
            return
        raise ApiError(400, f"the prompt ({prompt_tokens} tokens) is longer than the {block} tokens this model "
                       "reads: shorten it, or send \"truncate\": true to keep its last tokens", "prompt",
                       "context_length_exceeded")
    if prompt_tokens + max_tokens <= block:
        return
    raise ApiError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is more than the "
                   f"model's context of {block} tokens: shorten them, or send \"truncate\": true to keep the "
                   "prompt's last tokens and slide the window as gptcli generate does", "max_tokens",
                   "context_length_exceeded")


def _plan(body: dict, engine, prompts, texts, logprobs, echo: bool, extra_stops: tuple[str, ...]) -> Plan:
    n = _opt(body, "n", int)
    n = 1 if n is None else n
    if not 1 <= n <= MAX_N:
        raise ApiError(400, f"n must be between 1 and {MAX_N}, got {n}", "n")
    if n * len(prompts) > MAX_N:
        raise ApiError(400, f"{len(prompts)} prompts times n {n} is more than {MAX_N} outputs", "n")
    stops = body.get("stop")
    stops = [stops] if isinstance(stops, str) else [] if stops is None else stops
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    settings = _settings(body, n, tuple(stops) + extra_stops)
    try:
        sample = engine.sample_config(settings)
    except SettingError as e:
        param = API_NAMES.get(e.settings[0], e.settings[0]) if e.settings else None
        raise ApiError(400, e.render(lambda s: API_NAMES.get(s, s)), param) from None
    except UsageError as e:
        raise ApiError(400, str(e), "stop" if "stop string" in str(e) else None) from None
    options = _opt(body, "stream_options", dict) or {}
    stream = bool(_opt(body, "stream", bool))
    if set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "stream_options takes include_usage (true or false)", "stream_options")
    if options and not stream:
        raise ApiError(400, "stream_options applies to stream: true only", "stream_options")
    if sample.strategy == "beam" and logprobs is not None:
        raise ApiError(400, "logprobs are not reported for beam search", "logprobs")
    if sample.num_beams > MAX_N:
        raise ApiError(400, f"num_beams must be at most {MAX_N} here, got {sample.num_beams}", "num_beams")
    return Plan(prompts, texts, sample, n, stream, options.get("include_usage", False), echo, logprobs,
                sample.stop)


def _settings(body: dict, n: int, stops: tuple[str, ...]) -> dict:
    """SampleConfig settings from the fields given (only those: SampleConfig.settle
    refuses contradictions among what was set)."""
    settings: dict = {"max_new_tokens": _max_tokens(body)}
    for name in SAMPLING:
        if body.get(name) is not None:
            settings[name] = body[name]
    if settings.get("top_k") in (0, -1):  # llama.cpp's and vLLM's "off"
        del settings["top_k"]
    if settings.get("min_p") == 0:
        del settings["min_p"]
    greedy = settings.get("temperature") == 0
    if greedy and settings.get("top_p") == 1:  # clients send top_p 1 beside temperature 0
        del settings["top_p"]
    beams = settings.get("num_beams")
    if is_token_id(beams) and beams > 1:
        settings["num_return"] = n
    elif n > 1:
        if greedy:
            raise ApiError(400, "n > 1 with temperature 0 would repeat one output: sample, or use num_beams", "n")
        settings["num_samples"] = n
    if stops:
        settings["stop"] = stops
    return settings
