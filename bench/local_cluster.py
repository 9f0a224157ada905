"""A multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``), held by its own
process so that drivers (``keel batch``, tests, benchmarks) connect to it like to any
cluster, and so that a node can be removed from outside while they work.

    python -m bench.local_cluster --workers 2 --state DIR

writes ``DIR/address`` when every node is up. Touch ``DIR/remove`` to remove one worker
node (``DIR/removed`` then holds its node id); touch ``DIR/stop`` (or send SIGTERM) to shut
the cluster down. Every node is on 127.0.0.1.

With ``--pin``, node *i* (the head is 0) and every process it starts (raylet, object
store, workers; the head's GCS too) run on CPU core *i* alone: each node gets a core of its
own, as separate machines would, which is the only way to see scale-out on one machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from ray.cluster_utils import Cluster

from keel.client import RAY_NODE_ENV


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2, help="worker nodes besides the head")
    p.add_argument("--head-cpus", type=float, default=1)
    p.add_argument("--worker-cpus", type=float, default=2)
    p.add_argument("--state", required=True, help="folder for the address and the controls")
    p.add_argument("--pin", action="store_true", help="each node on a CPU core of its own")
    args = p.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and args.workers + 1 > len(cores):
        p.error(f"--pin needs a core per node: {args.workers + 1} nodes, {len(cores)} cores")

    def on_core(i: int) -> None:
        """Processes started from here on inherit this affinity (Linux)."""
        if args.pin:
            os.sched_setaffinity(0, {cores[i]})

    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    for name, value in RAY_NODE_ENV.items():  # its nodes run as a Keel deployment's do
        os.environ.setdefault(name, value)

    on_core(0)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": args.head_cpus,
            "include_dashboard": False,
            "node_ip_address": "127.0.0.1",
        },
    )
    workers = []
    for i in range(args.workers):
        on_core(i + 1)
        workers.append(cluster.add_node(num_cpus=args.worker_cpus, node_ip_address="127.0.0.1"))
    os.sched_setaffinity(0, set(cores))
    cluster.wait_for_nodes()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tmp = state / "address.tmp"
    tmp.write_text(str(cluster.address))
    os.replace(tmp, state / "address")
    print(f"cluster up at {cluster.address}: head + {len(workers)} workers", flush=True)
    try:
        while not stopping and not (state / "stop").exists():
            if (state / "remove").exists() and workers:
                node = workers.pop()
                node_id = node.node_id
                cluster.remove_node(node, allow_graceful=False)
                (state / "remove").unlink()
                (state / "removed").write_text(node_id)
                print(f"removed worker node {node_id}", flush=True)
            time.sleep(0.1)
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
