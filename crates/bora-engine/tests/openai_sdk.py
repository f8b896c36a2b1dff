"""Drives a running `bora engine serve` with the official OpenAI Python SDK.

Usage: python openai_sdk.py BASE_URL CHAT_MODEL EMBEDDING_MODEL
Exits non-zero on the first failed check; prints one line per check.
"""

import math
import sys

import openai

base_url, chat_model, embedding_model = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
PARIS = [{"role": "user", "content": "What is the capital city of France? Answer in one sentence."}]


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {name}", flush=True)


# Models.
ids = [m.id for m in client.models.list().data]
check("models.list", chat_model in ids and embedding_model in ids, ids)

# Chat, greedy: the reference answer, ended by the model.
r = client.chat.completions.create(model=chat_model, messages=PARIS, temperature=0, max_tokens=20)
c = r.choices[0]
check("chat greedy text", c.message.content == "The capital city of France is Paris.", c.message.content)
check("chat finish_reason stop", c.finish_reason == "stop", c.finish_reason)
check("chat role", c.message.role == "assistant", c.message.role)
check("chat usage", r.usage.prompt_tokens == 43 and r.usage.completion_tokens == 9
      and r.usage.total_tokens == 52, r.usage)

# max_tokens: finish_reason length.
r = client.chat.completions.create(model=chat_model, messages=PARIS, temperature=0, max_completion_tokens=3)
check("chat length", r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3,
      (r.choices[0].finish_reason, r.usage))
check("chat length text", r.choices[0].message.content == "The capital city", r.choices[0].message.content)

# Stop strings.
r = client.chat.completions.create(model=chat_model, messages=PARIS, temperature=0, stop=[" Paris", "xyz"])
check("chat stop", r.choices[0].message.content == "The capital city of France is"
      and r.choices[0].finish_reason == "stop", r.choices[0].message.content)

# Sampling: same seed, same output; n choices.
def sample(seed):
    return client.chat.completions.create(
        model=chat_model, messages=PARIS, temperature=1.2, top_p=0.95, seed=seed, extra_body={"top_k": 40},
        max_tokens=8, n=2, presence_penalty=0.5, frequency_penalty=0.5)
a, b = sample(7), sample(7)
check("seeded sampling is deterministic", [c.message.content for c in a.choices]
      == [c.message.content for c in b.choices], (a.choices, b.choices))
check("n choices", [c.index for c in a.choices] == [0, 1], a.choices)

# Streaming with usage.
chunks = list(client.chat.completions.create(
    model=chat_model, messages=PARIS, temperature=0, max_tokens=20, stream=True,
    stream_options={"include_usage": True}))
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
check("stream text", text == "The capital city of France is Paris.", text)
check("stream finish_reason", finish == ["stop"], finish)
check("stream role first", chunks[0].choices[0].delta.role == "assistant", chunks[0])
check("stream usage last", not chunks[-1].choices and chunks[-1].usage.completion_tokens == 9, chunks[-1])
check("stream one id", len({ch.id for ch in chunks}) == 1, {ch.id for ch in chunks})

# Log-probabilities: one entry per generated token, the sampled (greedy) token
# is the most likely alternative, alternatives are ordered, and the token texts
# spell the answer.
r = client.chat.completions.create(model=chat_model, messages=PARIS, temperature=0, max_tokens=20,
                                   logprobs=True, top_logprobs=5)
lp = r.choices[0].logprobs.content
check("logprobs one per token", len(lp) == r.usage.completion_tokens - 1, (len(lp), r.usage))
check("logprobs tokens spell the text", "".join(t.token for t in lp) == r.choices[0].message.content,
      [t.token for t in lp])
check("logprobs bytes", b"".join(bytes(t.bytes) for t in lp).decode() == r.choices[0].message.content, "")
check("top_logprobs length", all(len(t.top_logprobs) == 5 for t in lp), [len(t.top_logprobs) for t in lp])
check("top_logprobs ordered", all(a.logprob >= b.logprob for t in lp
                                  for a, b in zip(t.top_logprobs, t.top_logprobs[1:])), "")
check("greedy token is the top alternative", all(t.top_logprobs[0].token == t.token
                                                 and t.top_logprobs[0].logprob == t.logprob for t in lp), "")
check("logprobs are probabilities", all(t.logprob <= 0 and sum(math.exp(a.logprob) for a in t.top_logprobs) <= 1 + 1e-4
                                        for t in lp), "")
streamed = [t for ch in client.chat.completions.create(
    model=chat_model, messages=PARIS, temperature=0, max_tokens=20, logprobs=True, top_logprobs=2, stream=True)
    if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
check("stream logprobs", [(t.token, round(t.logprob, 4)) for t in streamed]
      == [(t.token, round(t.logprob, 4)) for t in lp] and all(len(t.top_logprobs) == 2 for t in streamed), streamed)
r = client.chat.completions.create(model=chat_model, messages=PARIS, temperature=0, max_tokens=3)
check("no logprobs unless asked", r.choices[0].logprobs is None, r.choices[0].logprobs)
r = client.completions.create(model=chat_model, prompt="Once upon a time, there was a little girl named",
                              max_tokens=4, temperature=0, logprobs=3)
l = r.choices[0].logprobs
check("completion logprobs", len(l.tokens) == 4 and "".join(l.tokens) == r.choices[0].text
      and len(l.token_logprobs) == 4 and all(len(t) == 3 for t in l.top_logprobs)
      and l.text_offset[0] == 0, l)
try:
    client.chat.completions.create(model=chat_model, messages=PARIS, logprobs=True, top_logprobs=21)
    check("bad top_logprobs", False, "no error")
except openai.BadRequestError as e:
    check("bad top_logprobs 400", e.param == "top_logprobs", e)

# Structured output by constrained decoding: json_object always parses, and
# json_schema output validates even when sampling at temperature 1 (so the
# grammar, not luck, decides).
import json
JSON_ASK = [{"role": "user", "content": "Reply with a JSON object with the keys country and capital for France."}]
r = client.chat.completions.create(model=chat_model, messages=JSON_ASK, temperature=0, max_tokens=200,
                                   response_format={"type": "json_object"})
c = r.choices[0]
check("json_object ends", c.finish_reason == "stop", (c.finish_reason, c.message.content))
check("json_object parses", isinstance(json.loads(c.message.content), dict), c.message.content)
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "country": {"type": "string", "maxLength": 20},
        "population": {"type": "integer"},
        "capital": {"type": "boolean"},
        "continent": {"enum": ["Europe", "Asia", "Africa", "America", "Oceania"]},
        "languages": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "area": {"type": "number"},
    },
    "required": ["city", "country", "population", "capital", "continent", "languages"],
    "additionalProperties": False,
}


def validates(v):
    props = SCHEMA["properties"]
    return (isinstance(v, dict) and all(k in v for k in SCHEMA["required"]) and set(v) <= set(props)
            and list(v) == [k for k in props if k in v]
            and isinstance(v["city"], str) and len(v["city"]) <= 20
            and isinstance(v["country"], str) and len(v["country"]) <= 20
            and isinstance(v["population"], int) and not isinstance(v["population"], bool)
            and isinstance(v["capital"], bool) and v["continent"] in props["continent"]["enum"]
            and isinstance(v["languages"], list) and 1 <= len(v["languages"]) <= 3
            and all(isinstance(x, str) and len(x) <= 12 for x in v["languages"])
            and (("area" not in v) or isinstance(v["area"], (int, float))))


CITY = [{"role": "user", "content": "Give facts about Paris as JSON."}]
RF = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": SCHEMA}}
for seed in range(4):
    r = client.chat.completions.create(model=chat_model, messages=CITY, temperature=1.0, seed=seed,
                                       max_tokens=400, response_format=RF)
    c = r.choices[0]
    check(f"json_schema seed {seed} ends", c.finish_reason == "stop", (c.finish_reason, c.message.content))
    check(f"json_schema seed {seed} validates", validates(json.loads(c.message.content)), c.message.content)
streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
    model=chat_model, messages=CITY, temperature=0, max_tokens=400, response_format=RF, stream=True)
    if ch.choices)
check("json_schema stream validates", validates(json.loads(streamed)), streamed)
try:
    client.chat.completions.create(model=chat_model, messages=CITY, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}}})
    check("unsupported schema keyword", False, "no error")
except openai.BadRequestError as e:
    check("unsupported schema keyword 400", e.param == "response_format.json_schema.schema.pattern", e)

# Tools. A forced call (a named function, or `required`) is constrained to
# {"name", "arguments"} with the function's parameters schema, so the
# arguments validate even when sampling at temperature 1; the answer comes
# back as tool_calls with finish_reason tool_calls.
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current time in a time zone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}},
                   "required": ["timezone"]}}}
TOOLS = [WEATHER_TOOL, TIME_TOOL]
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


def weather_args(arguments):
    a = json.loads(arguments)
    return (isinstance(a, dict) and isinstance(a.get("city"), str) and set(a) <= {"city", "unit"}
            and a.get("unit", "celsius") in ("celsius", "fahrenheit"))


def time_args(arguments):
    a = json.loads(arguments)
    return isinstance(a, dict) and set(a) == {"timezone"} and isinstance(a["timezone"], str)


def valid_call(call, names=("get_weather", "get_time")):
    return (call.type == "function" and call.id.startswith("call_") and call.function.name in names
            and (weather_args if call.function.name == "get_weather" else time_args)(call.function.arguments))


for seed in range(2):
    r = client.chat.completions.create(model=chat_model, messages=ASK_WEATHER, tools=TOOLS, tool_choice=FORCE_WEATHER,
                                       temperature=1.0, seed=seed, max_tokens=200, n=2)
    for c in r.choices:
        check(f"forced tool seed {seed}.{c.index} finish_reason", c.finish_reason == "tool_calls",
              (c.finish_reason, c.message))
        calls = c.message.tool_calls or []
        check(f"forced tool seed {seed}.{c.index} call", c.message.content is None and len(calls) == 1
              and valid_call(calls[0], ["get_weather"]), c.message)
    check(f"forced tool seed {seed} usage", r.usage.completion_tokens > 0
          and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage)
r = client.chat.completions.create(model=chat_model, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                                   temperature=1.0, seed=3, max_tokens=200, n=3)
check("required tool calls", all(c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
                                 and valid_call(c.message.tool_calls[0]) for c in r.choices), r.choices)

# The same forced call streamed: the call arrives in delta.tool_calls, and the
# SDK's stream helper assembles it.
chunks = list(client.chat.completions.create(
    model=chat_model, messages=ASK_WEATHER, tools=TOOLS, tool_choice=FORCE_WEATHER, temperature=0, max_tokens=200,
    stream=True, stream_options={"include_usage": True}))
calls = {}
for ch in chunks:
    for d in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
        call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
        call["id"] = d.id or call["id"]
        call["name"] += (d.function and d.function.name) or ""
        call["arguments"] += (d.function and d.function.arguments) or ""
finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
check("stream tool finish_reason", finish == ["tool_calls"], finish)
check("stream tool call", list(calls) == [0] and calls[0]["id"].startswith("call_")
      and calls[0]["name"] == "get_weather" and weather_args(calls[0]["arguments"]), calls)
check("stream tool no content", not "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), chunks)
check("stream tool usage", not chunks[-1].choices and chunks[-1].usage.completion_tokens > 0, chunks[-1])
unstreamed = client.chat.completions.create(model=chat_model, messages=ASK_WEATHER, tools=TOOLS,
                                            tool_choice=FORCE_WEATHER, temperature=0, max_tokens=200)
check("stream tool = plain", json.loads(calls[0]["arguments"])
      == json.loads(unstreamed.choices[0].message.tool_calls[0].function.arguments), (calls, unstreamed))
with client.chat.completions.stream(model=chat_model, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                                    temperature=0, max_tokens=200) as stream:
    final = stream.get_final_completion()
c = final.choices[0]
check("stream helper tool call", c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
      and valid_call(c.message.tool_calls[0]), c)

# A follow-up turn: the assistant's call and the tool's result go back, and
# the model answers in text.
call_msg = unstreamed.choices[0].message
follow = ASK_WEATHER + [call_msg, {"role": "tool", "tool_call_id": call_msg.tool_calls[0].id,
                                   "content": json.dumps({"temperature": 18, "unit": "celsius", "sky": "sunny"})}]
r = client.chat.completions.create(model=chat_model, messages=follow, tools=TOOLS, tool_choice="none",
                                   temperature=0, max_tokens=60)
c = r.choices[0]
check("tool result answered", c.finish_reason in ("stop", "length") and isinstance(c.message.content, str)
      and c.message.content and not c.message.tool_calls, c)
# tool_choice none: the tools are not offered (the prompt is the plain one).
r = client.chat.completions.create(model=chat_model, messages=PARIS, tools=TOOLS, tool_choice="none",
                                   temperature=0, max_tokens=20)
c = r.choices[0]
check("tool_choice none", c.message.content == "The capital city of France is Paris." and not c.message.tool_calls
      and c.finish_reason == "stop" and r.usage.prompt_tokens == 43, (c, r.usage))
# auto: the model decides (not asserted); either way the answer is well formed.
r = client.chat.completions.create(model=chat_model, messages=ASK_WEATHER, tools=TOOLS, temperature=0, max_tokens=60)
c = r.choices[0]
check("tool_choice auto", (c.finish_reason == "tool_calls" and c.message.tool_calls
                           and all(valid_call(t) for t in c.message.tool_calls))
      or (c.finish_reason in ("stop", "length") and isinstance(c.message.content, str)), c)
for kwargs, param in [
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_stock"}}), "tool_choice"),
    (dict(tools=[{"type": "function", "function": {"name": "get weather"}}]), "tools[0].function.name"),
    (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}), "response_format"),
]:
    try:
        client.chat.completions.create(model=chat_model, messages=ASK_WEATHER, **kwargs)
        check(f"bad tools {param}", False, "no error")
    except openai.BadRequestError as e:
        check(f"bad tools {param} 400", e.param == param, e)

# Text completions, plain and streamed.
r = client.completions.create(model=chat_model, prompt="Once upon a time, there was a little girl named",
                              max_tokens=4, temperature=0)
# Only the first two tokens have a clear margin (the third is a near tie
# between " lived", " loved" and " had"; see shared/reference/README.md).
check("completion text", r.choices[0].text.startswith(" Emma who"), r.choices[0].text)
check("completion usage", r.usage.prompt_tokens == 11 and r.usage.completion_tokens == 4, r.usage)
streamed = "".join(ch.choices[0].text for ch in client.completions.create(
    model=chat_model, prompt="Once upon a time, there was a little girl named", max_tokens=4,
    temperature=0, stream=True))
check("completion stream", streamed == r.choices[0].text, streamed)

# Embeddings: batch, float and base64 (the SDK's default) agree.
inputs = ["A man is eating food.", "A man is eating a piece of bread."]
f = client.embeddings.create(model=embedding_model, input=inputs, encoding_format="float")
d = client.embeddings.create(model=embedding_model, input=inputs)
check("embeddings count", len(f.data) == 2 and [e.index for e in f.data] == [0, 1], len(f.data))
check("embeddings dims", all(len(e.embedding) == 384 for e in f.data + d.data), "")
check("embeddings base64 == float", all(abs(x - y) < 1e-6 for e1, e2 in zip(f.data, d.data)
                                        for x, y in zip(e1.embedding, e2.embedding)), "")
check("embeddings reference", abs(f.data[0].embedding[0] - 0.03324156937066124) < 1e-3, f.data[0].embedding[:3])
cos = sum(x * y for x, y in zip(f.data[0].embedding, f.data[1].embedding))
check("embeddings cosine", abs(cos - 0.755337) < 1e-3, cos)
check("embeddings normalised", abs(math.sqrt(sum(x * x for x in f.data[0].embedding)) - 1) < 1e-4, "")
check("embeddings usage", f.usage.prompt_tokens == 8 + 11, f.usage)

# Errors in the OpenAI shape.
try:
    client.chat.completions.create(model="no-such-model", messages=PARIS)
    check("unknown model", False, "no error")
except openai.NotFoundError as e:
    check("unknown model 404", e.status_code == 404 and e.code == "model_not_found", e)
try:
    client.chat.completions.create(model=chat_model, messages=PARIS, temperature=5)
    check("bad temperature", False, "no error")
except openai.BadRequestError as e:
    check("bad temperature 400", e.param == "temperature", e)
try:
    client.chat.completions.create(model=chat_model, messages=PARIS, max_tokens=100000)
    check("context length", False, "no error")
except openai.BadRequestError as e:
    check("context length 400", e.code == "context_length_exceeded" and "8192" in e.message, e)
try:
    client.embeddings.create(model=embedding_model, input="x", encoding_format="hex")
    check("bad encoding_format", False, "no error")
except openai.BadRequestError as e:
    check("bad encoding_format 400", e.param == "encoding_format", e)

print("all checks passed")
