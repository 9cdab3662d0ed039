"""Command line: ``python -m agents run`` runs a worker (settings in :mod:`agents.run`);
``python -m agents fake-api`` runs the offline Messages API."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

import uvicorn

from agents.fake_api import FakeApi, create_app
from agents.run import run_worker
from shapes.collector import tune_garbage_collector


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agents")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run a worker (configured from the environment)")
    fake = commands.add_parser("fake-api", help="serve the offline Messages API")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8765)
    fake.add_argument("--seed", type=int, default=0)
    fake.add_argument("--record", type=Path, help="append each request/response pair (JSONL)")
    fake.add_argument("--replay", type=Path, help="serve a recorded session (JSONL)")
    return parser.parse_args(argv)


def run_fake_api(args: argparse.Namespace) -> None:
    fake = FakeApi(seed=args.seed, record_to=args.record)
    if args.replay is not None:
        fake.load_replay(args.replay)
    print(f"fake Messages API on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(
        create_app(fake), host=args.host, port=args.port, log_level="warning", lifespan="off"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "fake-api":
        run_fake_api(args)
    elif args.command == "run":
        logging.basicConfig(
            level=os.environ.get("AGENTS_LOG_LEVEL", "INFO"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpx2").setLevel(logging.WARNING)
        tune_garbage_collector()  # a worker follows a shape per thread its agents are in
        asyncio.run(run_worker())


if __name__ == "__main__":
    main()
