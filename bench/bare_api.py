"""A bare FastAPI app with one route, `POST /v1/generate`, that returns a fixed job JSON with status 202.

It is the baseline of bench/admission.py: the same framework and server settings as `reins api`, without
authentication, validation, Redis or RQ. Run as `python -m bench.bare_api --port P --workers N` from the repository
root with BENCH_BARE_RESPONSE_FILE naming a JSON file that contains the response body.
"""

from __future__ import annotations

import argparse
import json
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def create_app() -> FastAPI:
    with open(os.environ["BENCH_BARE_RESPONSE_FILE"]) as file:
        body = json.load(file)
    app = FastAPI()

    @app.post("/v1/generate", status_code=202)
    async def generate(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(body, status_code=202)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    args = parser.parse_args()
    # The same uvicorn arguments as `reins api` (reins/cli.py) with REINS_LOG_LEVEL=WARNING.
    uvicorn.run("bench.bare_api:create_app", factory=True, host="127.0.0.1", port=args.port, workers=args.workers,
                log_level="warning", log_config=None)


if __name__ == "__main__":
    main()
