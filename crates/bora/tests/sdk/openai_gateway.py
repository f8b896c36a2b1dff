"""Drives Bora's inference gateway with the official OpenAI Python SDK, as a
user's application would: `python openai_gateway.py BASE_URL KEY MODEL STEP`.

Steps:
  chat     a plain chat and a streamed one (printed as JSON)
  refused  a bad key, an unknown model, a malformed call (the SDK's errors)

Prints one JSON object on stdout; exits non-zero on anything unexpected.
"""

import json
import sys

import openai

base_url, key, model, step = sys.argv[1:5]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
out = {}

if step == "chat":
    models = [m.id for m in client.models.list().data]
    assert model in models, models
    out["models"] = models
    plain = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8,
        temperature=0,
    )
    assert plain.choices[0].message.content, plain
    assert plain.usage.prompt_tokens > 0 and plain.usage.completion_tokens > 0, plain
    out["plain"] = {
        "content": plain.choices[0].message.content,
        "usage": [plain.usage.prompt_tokens, plain.usage.completion_tokens],
    }
    pieces, chunks = [], 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count from 1 to 5."}],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        chunks += 1
        # The client did not ask for usage: every chunk has a choice.
        assert chunk.choices, chunk
        if chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert pieces, "no streamed text"
    out["stream"] = {"content": "".join(pieces), "chunks": chunks}
elif step == "refused":
    bad = openai.OpenAI(base_url=base_url, api_key="bora-sk-wrong", max_retries=0)
    try:
        bad.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        raise SystemExit("a wrong key was accepted")
    except openai.AuthenticationError as e:
        out["bad_key"] = [e.status_code, e.code]
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        raise SystemExit("an unknown model was accepted")
    except openai.NotFoundError as e:
        out["unknown_model"] = [e.status_code, e.code]
    try:
        client.chat.completions.create(model=model, messages="not a list")
        raise SystemExit("a malformed request was accepted")
    except openai.BadRequestError as e:
        out["malformed"] = [e.status_code]
else:
    raise SystemExit(f"unknown step {step}")

print(json.dumps(out))
