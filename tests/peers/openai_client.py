"""Calls agentrt's model gateway with the official `openai` SDK, as code in
a sandbox would: base URL = the gateway, API key = a session credential.

usage: openai_client.py BASE_URL API_KEY MODEL (plain|stream)
Prints one JSON line: {"content", "usage", "model"} or {"error", "status"}.
"""

import json
import sys

import openai


def main() -> None:
    base_url, api_key, model, mode = sys.argv[1:5]
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    messages = [{"role": "user", "content": "say hello"}]
    try:
        if mode == "stream":
            content, usage = "", None
            stream = client.chat.completions.create(
                model=model, messages=messages, stream=True, stream_options={"include_usage": True}
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    content += chunk.choices[0].delta.content
                if chunk.usage:
                    usage = chunk.usage.model_dump()
            print(json.dumps({"content": content, "usage": usage, "model": model}))
        else:
            reply = client.chat.completions.create(model=model, messages=messages)
            print(json.dumps({"content": reply.choices[0].message.content, "usage": reply.usage.model_dump(), "model": reply.model}))
    except openai.APIStatusError as e:
        print(json.dumps({"error": str(e), "status": e.status_code}))


if __name__ == "__main__":
    main()
