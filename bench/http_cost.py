"""What one streamed chat request costs the caller's process, through the `openai` SDK and through
plain aiohttp, against the fake OpenAI server on 127.0.0.1 (in this process, no delays):

    python -m bench.http_cost [N]

CPU time per request (`time.process_time`, this process: client and fake together, so the
difference between the two lines is the client's). The server makes one such request per LLM
answer, one per transcription and one per TTS sentence, all on the event loop every device
shares; this is why the audio endpoints use aiohttp (server/providers/openai_common.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import openai

from harness.fakes.openai_server import FakeOpenAIServer


async def measure(n: int) -> dict[str, float]:
    fake = FakeOpenAIServer()
    await fake.start()
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="bench", max_retries=0)
    session = aiohttp.ClientSession()
    body = {"model": fake.model, "messages": [{"role": "user", "content": "hello"}], "stream": True}

    async def with_sdk() -> int:
        stream = await client.chat.completions.create(model=fake.model, messages=body["messages"], stream=True)
        return sum([1 async for _ in stream])

    async def with_aiohttp() -> int:
        async with session.post(fake.base_url.rstrip("/") + "/chat/completions", json=body) as resp:
            chunks = 0
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    json.loads(line[6:])
                    chunks += 1
            return chunks

    out: dict[str, float] = {}
    try:
        for name, call in (("openai_sdk", with_sdk), ("aiohttp", with_aiohttp)):
            await call()  # warm: imports, connection
            cpu0 = time.process_time()
            for _ in range(n):
                await call()
            out[name] = round((time.process_time() - cpu0) / n * 1000, 2)
    finally:
        await session.close()
        await client.close()
        await fake.close()
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    result = asyncio.run(measure(n))
    print(f"CPU per streamed chat request ({n} each, client + fake): openai SDK {result['openai_sdk']} ms, "
          f"aiohttp {result['aiohttp']} ms")


if __name__ == "__main__":
    main()
