"""A webhook receiver for benchmarks: answers 200 at once and counts (GET /count).

Runs in its own process so neither the bridge nor the plain client shares its loop.
Usage: python bench/receiver.py PORT
"""

from __future__ import annotations

import sys

from aiohttp import web


def build() -> web.Application:
    state = {"count": 0}

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        state["count"] += 1
        return web.Response(status=200)

    async def count(request: web.Request) -> web.Response:
        return web.json_response(state)

    async def reset(request: web.Request) -> web.Response:
        state["count"] = 0
        return web.json_response(state)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/count", count)
    app.router.add_post("/reset", reset)
    return app


if __name__ == "__main__":
    web.run_app(build(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
