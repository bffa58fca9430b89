#!/usr/bin/env python3
"""Talk to `card serve` with the official `openai` Python client, unchanged: a completion,
a streamed completion and a chat completion. Exits non-zero on any mismatch."""
import argparse
import sys

from openai import OpenAI


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default=None, help="default: the first model the server lists")
    a = ap.parse_args()
    client = OpenAI(base_url=a.base_url, api_key="not-needed", max_retries=0, timeout=60)
    model = a.model or client.models.list().data[0].id
    assert model in [m.id for m in client.models.list().data]

    c = client.completions.create(model=model, prompt="Alice was", max_tokens=8, temperature=0)
    assert c.object == "text_completion" and len(c.choices) == 1, c
    assert c.choices[0].finish_reason in ("stop", "length"), c
    assert 1 <= c.usage.completion_tokens <= 8, c.usage
    extra = c.usage.model_extra or {}
    assert extra.get("forward_passes", 0) >= 1 and extra.get("tokens_per_forward", 0) > 0, c.usage
    print(f"completion: {c.choices[0].text!r} ({c.usage.completion_tokens} tokens, "
          f"{extra['forward_passes']} forward passes, {extra['tokens_per_forward']:.2f} tokens/forward)")

    pieces, finish = [], None
    stream = client.completions.create(model=model, prompt="Alice was", max_tokens=8,
                                       temperature=0, stream=True)
    for chunk in stream:
        for ch in chunk.choices:
            pieces.append(ch.text)
            finish = ch.finish_reason or finish
    streamed = "".join(pieces)
    assert streamed == c.choices[0].text, (streamed, c.choices[0].text)
    assert finish == c.choices[0].finish_reason, finish
    print(f"streamed completion: {len(pieces)} chunks, same text, finish_reason {finish}")

    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=6, temperature=0)
    assert chat.choices[0].message.role == "assistant", chat
    deltas = []
    for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=6,
            temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
    assert "".join(deltas) == chat.choices[0].message.content, (deltas, chat)
    print(f"chat: {chat.choices[0].message.content!r}, streamed the same")

    try:
        client.completions.create(model=model, prompt="x", max_tokens=-1)
        raise AssertionError("a negative max_tokens was accepted")
    except Exception as e:  # openai.UnprocessableEntityError
        assert getattr(e, "status_code", None) == 422, e
    print("openai client check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
