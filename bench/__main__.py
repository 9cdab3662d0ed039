"""``python -m bench`` (``make bench``): run the benchmarks and print their summary lines.

On a machine that can compile, the benchmarks refuse to measure the pure-Python sources unless
asked to (``--allow-pure`` or ``SYNCD_PURE_PYTHON=1``): a build that fell back, or sources
edited since it ran, would otherwise be measured as if compiled."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bench.agents import run_agent_reaction
from bench.agents_many import ManyOptions, run_agents_many
from bench.burn_users import BurnOptions, run_burn_users
from bench.cache_fanout import run_cache_fanout
from bench.compaction import run_compaction, run_compaction_ingest
from bench.fanout import run_fanout
from bench.ingest import MANY, ONE, RECV, IngestOptions, run_ingest
from bench.initial_sync import run_initial_sync
from bench.large_txn import run_large_txn
from bench.memory import run_memory
from bench.shape_creation import run_shape_creation
from bench.stalled_readers import run_stalled_readers
from bench.subquery import run_move_in, run_shapes_ingest
from bench.txn_fanout import run_txn_fanout
from bench.ui import run_first_paint, run_live
from bench.where_eval import run_where_non_indexed
from bench.write_to_client import run_write_to_client
from shapes import compiled

BENCHES = (
    "ingest",
    "ingest-10k-shapes-small-txns",
    "initial-sync-1m",
    "where-non-indexed",
    "shape-creation",
    "large-txn",
    "fanout-python",
    "fanout-python-long-poll",
    "fanout-js",
    "fanout-js-long-poll",
    "fanout-raw-long-poll",
    "txn-to-750-shapes",
    "cache-fanout-10k",
    "compaction",
    "compaction-ingest",
    "memory",
    "write-to-client",
    "stalled-readers-rss",
    "subquery-move-in",
    "subquery-shapes-ingest",
    "ui-first-paint",
    "ui-live",
    "burn-users",
    "agent-reaction",
    "agents-1000-threads",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to insert")
    parser.add_argument("--txn-rows", type=int, default=1_000, help="rows per transaction")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per reader (median)")
    parser.add_argument("--shapes", type=int, default=10_000, help="shapes of ingest-10k-shapes")
    parser.add_argument(
        "--readers",
        default=",".join((RECV, ONE, MANY)),
        help="comma-separated readers to run (default: all; for profiling)",
    )
    parser.add_argument("--only-one", action="store_true", help="skip ingest-10k-shapes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--allow-pure",
        action="store_true",
        help="measure the pure-Python sources although a C compiler is at hand",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level of syncd")
    parser.add_argument(
        "--benches",
        default=",".join(BENCHES),
        help="comma-separated benchmarks to run: " + ", ".join(BENCHES) + " (default: all)",
    )
    parser.add_argument(
        "--fanout-subscribers", type=int, default=1_000, help="subscribers of the fanout benches"
    )
    parser.add_argument(
        "--fanout-commits", type=int, default=10, help="commits (1 s apart) of the fanout benches"
    )
    parser.add_argument(
        "--cache-clients", type=int, default=10_000, help="clients behind nginx of cache-fanout-10k"
    )
    parser.add_argument(
        "--creation-shapes", type=int, default=10_000, help="shapes of shape-creation"
    )
    parser.add_argument(
        "--initial-rows", type=int, default=1_000_000, help="table rows of initial-sync-1m"
    )
    parser.add_argument(
        "--w2c-commits", type=int, default=200, help="commits per phase of write-to-client"
    )
    parser.add_argument(
        "--w2c-interval", type=float, default=0.05, help="seconds between write-to-client commits"
    )
    parser.add_argument(
        "--large-rows", type=int, default=2_000_000, help="rows in the large-txn transaction"
    )
    parser.add_argument(
        "--large-row-bytes", type=int, default=1_000, help="text bytes per large-txn row"
    )
    parser.add_argument(
        "--stalled-readers",
        type=int,
        default=1_000,
        help="readers of stalled-readers-rss",
    )
    parser.add_argument(
        "--stalled-megabytes", type=int, default=200, help="MB written by stalled-readers-rss"
    )
    parser.add_argument(
        "--stalled-write-rate", type=float, default=5.0, help="MB/s of stalled-readers-rss"
    )
    parser.add_argument(
        "--move-in-rounds", type=int, default=10, help="membership inserts of subquery-move-in"
    )
    parser.add_argument(
        "--move-in-rows", type=int, default=1_000, help="events per thread of subquery-move-in"
    )
    parser.add_argument(
        "--subquery-shapes", type=int, default=10_000, help="shapes of subquery-shapes-ingest"
    )
    parser.add_argument(
        "--subquery-rows", type=int, default=100_000, help="events of subquery-shapes-ingest"
    )
    parser.add_argument("--ui-events", type=int, default=1_000, help="events of ui-first-paint")
    parser.add_argument("--ui-rounds", type=int, default=3, help="rounds of ui-first-paint")
    parser.add_argument("--ui-messages", type=int, default=20, help="messages of ui-live")
    parser.add_argument(
        "--users", type=int, default=1_000, help="signed-in users of burn-users (5 shapes each)"
    )
    parser.add_argument(
        "--burn-threads",
        type=int,
        default=None,
        help="threads of burn-users (default: one per 10 users, 100 for 1,000)",
    )
    parser.add_argument(
        "--burn-rate", type=float, default=50.0, help="messages per second of burn-users"
    )
    parser.add_argument(
        "--burn-seconds", type=float, default=20.0, help="seconds of messages of burn-users"
    )
    parser.add_argument(
        "--burn-live-mode", choices=["sse", "long-poll"], default="sse", help="burn-users' clients"
    )
    parser.add_argument(
        "--agent-messages", type=int, default=200, help="messages of agent-reaction"
    )
    parser.add_argument(
        "--agent-threads", type=int, default=1_000, help="threads of agents-1000-threads"
    )
    parser.add_argument(
        "--agent-idle-seconds",
        type=float,
        default=20.0,
        help="seconds without messages of agents-1000-threads (idle CPU)",
    )
    parser.add_argument(
        "--agent-rate", type=float, default=50.0, help="messages per second of agents-1000-threads"
    )
    parser.add_argument(
        "--agent-seconds",
        type=float,
        default=30.0,
        help="seconds of messages of agents-1000-threads",
    )
    args = parser.parse_args(argv)
    benches = set(args.benches.split(","))
    if not benches or benches - set(BENCHES):
        parser.error("--benches takes some of " + ", ".join(BENCHES))
    if args.fanout_subscribers < 1 or args.fanout_commits < 1:
        parser.error("--fanout-subscribers and --fanout-commits must be positive")
    if args.creation_shapes < 1 or args.initial_rows < 1:
        parser.error("--creation-shapes and --initial-rows must be positive")
    if args.w2c_commits < 1 or args.w2c_interval < 0:
        parser.error("--w2c-commits must be positive and --w2c-interval not negative")
    if args.large_rows < 1 or args.large_row_bytes < 0:
        parser.error("--large-rows must be positive and --large-row-bytes not negative")
    if min(args.move_in_rounds, args.move_in_rows, args.subquery_shapes, args.subquery_rows) < 1:
        parser.error("the subquery bench sizes must be positive")
    fallback = None if args.allow_pure else compiled.fallback_unasked()
    if fallback is not None:
        parser.error(
            f"syncd would run its pure-Python sources ({fallback}) although this machine can "
            "compile them: run `make install` (its output says why a build fell back), set "
            f"{compiled.PURE_PYTHON_ENV}=1 or pass --allow-pure to measure the sources"
        )
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        options = IngestOptions(
            rows=args.rows,
            txn_rows=args.txn_rows,
            rounds=args.rounds,
            shapes=args.shapes,
            readers=tuple(r for r in args.readers.split(",") if not (args.only_one and r == MANY)),
            keep=args.keep,
        )
        many = ManyOptions(
            threads=args.agent_threads,
            idle_seconds=args.agent_idle_seconds,
            rate=args.agent_rate,
            seconds=args.agent_seconds,
            keep=args.keep,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if "ingest" in benches:
        run_ingest(options)
    if "ingest-10k-shapes-small-txns" in benches:
        run_ingest(
            IngestOptions(
                rows=200_000,
                txn_rows=10,
                rounds=args.rounds,
                shapes=10_000,
                readers=(RECV, MANY),
                keep=args.keep,
                many_name="ingest-10k-shapes-small-txns",
                many_baseline=RECV,
            )
        )
    if "initial-sync-1m" in benches:
        run_initial_sync(args.initial_rows, rounds=args.rounds, keep=args.keep)
    if "large-txn" in benches:
        run_large_txn(args.large_rows, args.large_row_bytes, keep=args.keep)
    for client in ("python", "python-long-poll", "js", "js-long-poll", "raw-long-poll"):
        if f"fanout-{client}" in benches:
            run_fanout(client, args.fanout_subscribers, args.fanout_commits)
    if "txn-to-750-shapes" in benches:
        run_txn_fanout(keep=args.keep)
    if "cache-fanout-10k" in benches:
        run_cache_fanout(args.cache_clients, keep=args.keep)
    if "compaction" in benches:
        run_compaction(keep=args.keep)
    if "compaction-ingest" in benches:
        run_compaction_ingest(keep=args.keep)
    if "memory" in benches:
        run_memory(keep=args.keep)
    if "where-non-indexed" in benches:
        run_where_non_indexed(rounds=args.rounds)
    if "shape-creation" in benches:
        run_shape_creation(args.creation_shapes, keep=args.keep)
    if "write-to-client" in benches:
        run_write_to_client(args.w2c_commits, args.w2c_interval, keep=args.keep)
    if "stalled-readers-rss" in benches:
        run_stalled_readers(
            args.stalled_readers, args.stalled_megabytes, args.stalled_write_rate, keep=args.keep
        )
    if "subquery-move-in" in benches:
        run_move_in(args.move_in_rounds, args.move_in_rows, keep=args.keep)
    if "subquery-shapes-ingest" in benches:
        run_shapes_ingest(args.subquery_rows, args.subquery_shapes, keep=args.keep)
    if "ui-first-paint" in benches:
        run_first_paint(args.ui_events, args.ui_rounds, keep=args.keep)
    if "ui-live" in benches:
        run_live(args.ui_messages, keep=args.keep)
    if "burn-users" in benches:
        run_burn_users(
            BurnOptions(
                users=args.users,
                threads=args.burn_threads or max(1, args.users // 10),
                rate=args.burn_rate,
                seconds=args.burn_seconds,
                live_mode=args.burn_live_mode,
                keep=args.keep,
            )
        )
    if "agent-reaction" in benches:
        run_agent_reaction(args.agent_messages, keep=args.keep)
    if "agents-1000-threads" in benches:
        run_agents_many(many)
    return 0


if __name__ == "__main__":
    sys.exit(main())
