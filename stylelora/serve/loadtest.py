"""A bounded load test of a running server: a fixed number of requests, so many at a time, then a report.

    python -m stylelora.serve.loadtest http://127.0.0.1:8000 --requests 300 --concurrency 16 --max-stack 3

Each request asks for a random stack of 0 to `max_stack` of the server's adapters at random weights. With
`--check`, every image is then asked for again, alone, and compared: the batched answer must equal it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass

import httpx
import numpy as np
from PIL import Image


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    errors: int
    seconds: float
    images_per_second: float
    p50_seconds: float
    p99_seconds: float
    checked: int = 0  # images asked for again alone
    bitwise_equal: int = 0  # of them, identical to the batched answer
    max_pixel_difference: int = 0  # 0-255, over all checked images


def random_requests(names: list[str], count: int, max_stack: int = 3, steps: int = 4, seed: int = 0,
                    prompts: tuple[str, ...] = ("a red circle", "a blue square", "a green triangle")) -> list[dict]:
    """`count` generate bodies: random prompts, seeds and stacks of 0 to `max_stack` adapters of `names`."""
    pick = random.Random(seed)
    return [{"prompt": pick.choice(prompts), "seed": pick.randrange(10_000), "steps": steps,
             "adapters": [{"name": name, "weight": round(pick.uniform(0.2, 1.2), 2)}
                          for name in pick.sample(names, pick.randint(0, min(max_stack, len(names))))]}
            for _ in range(count)]


def pixels(reply: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(image["png"])))) for image in reply["images"]]


async def _send_all(url: str, bodies: list[dict], concurrency: int, headers: dict) -> tuple[list, list[float], float]:
    gate = asyncio.Semaphore(concurrency)
    replies: list = [None] * len(bodies)
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient, index: int) -> None:
        async with gate:
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/generate", json=bodies[index], headers=headers)
                replies[index] = response.json() if response.status_code == 200 else response.status_code
            except httpx.HTTPError as error:
                replies[index] = repr(error)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(one(client, i) for i in range(len(bodies))))
    return replies, latencies, time.perf_counter() - start


def run_load_test(url: str, bodies: list[dict], concurrency: int = 16, check: bool = True,
                  api_key: str | None = None) -> LoadReport:
    """Send `bodies`, `concurrency` at a time; with `check`, ask for each again alone and compare the images."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    replies, latencies, seconds = asyncio.run(_send_all(url.rstrip("/"), bodies, concurrency, headers))
    good = [r for r in replies if isinstance(r, dict)]
    ordered = sorted(latencies)
    report = LoadReport(len(bodies), concurrency, len(bodies) - len(good), round(seconds, 2),
                        round(sum(len(r["images"]) for r in good) / seconds, 3),
                        round(statistics.median(ordered), 3), round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3))
    if check:
        alone, _, _ = asyncio.run(_send_all(url.rstrip("/"), bodies, 1, headers))
        for batched, single in zip(replies, alone):
            if not (isinstance(batched, dict) and isinstance(single, dict)):
                continue
            for a, b in zip(pixels(batched), pixels(single)):
                difference = int(np.abs(a.astype(int) - b.astype(int)).max())
                report.checked += 1
                report.bitwise_equal += difference == 0
                report.max_pixel_difference = max(report.max_pixel_difference, difference)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stylelora.serve.loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-stack", type=int, default=3)
    parser.add_argument("--adapters", type=int, default=50, help="how many of the server's adapters to pick from")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--check", action="store_true", help="ask for every image again alone and compare")
    parser.add_argument("--api-key")
    args = parser.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    listed = httpx.get(f"{args.url.rstrip('/')}/v1/adapters", headers=headers, timeout=60).json()["adapters"]
    names = [a["name"] for a in listed][:args.adapters]
    bodies = random_requests(names, args.requests, args.max_stack, args.steps)
    print(json.dumps(asdict(run_load_test(args.url, bodies, args.concurrency, args.check, args.api_key)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
