"""Train on every device of every host: one process per host (or K with --nproc_per_host).

    one host, all local devices:   python launch/multihost.py -c CONFIG [-o Key.sub=value ...]
    JAX style:                     ... --coordinator 10.0.0.1:1234 --num_processes 2 --process_id 0
    PaddleOCR style (every host):  ... --ips 10.0.0.1,10.0.0.2 [--start_port 17000]
    SLURM / mpirun:                srun python launch/multihost.py -c CONFIG   (detected)
    K local workers:               ... --nproc_per_host 2 [--cpu_devices_per_process 2] [--log_dir log]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxocr import cli  # noqa: E402


def parser():
    p = cli.parser(__doc__)
    g = p.add_argument_group("multi-host")
    g.add_argument("--coordinator", default=None,
                   help="HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--coordinator_bind_address", default=None,
                   help="HOST:PORT process 0's coordinator listens on (default: the coordinator "
                        "address itself; 0.0.0.0:PORT listens on every interface, e.g. behind "
                        "NAT: keep it on a private network, it has no authentication)")
    g.add_argument("--num_processes", type=int, default=None)
    g.add_argument("--process_id", type=int, default=None)
    g.add_argument("--ips", default=None, help="comma-separated host list; the first is trainer0")
    g.add_argument("--start_port", type=int, default=17000, help="coordinator port with --ips")
    g.add_argument("--gpus", default=None, help="local device ids, e.g. 0,1,2,3 (default: all "
                   "local GPUs; with --nproc_per_host K, split evenly over the K workers)")
    g.add_argument("--nproc_per_host", type=int, default=None,
                   help="start K local worker processes, each with a slice of the local devices "
                        "(G local GPUs: G/K each, in order)")
    g.add_argument("--cpu_devices_per_process", type=int, default=None,
                   help="on CPU: simulated devices per worker process")
    g.add_argument("--log_dir", default="./log", help="workerlog.N files (with --nproc_per_host)")
    g.add_argument("--init_timeout", type=int, default=300, help="seconds to join the job")
    g.add_argument("--heartbeat_timeout", type=int, default=40,
                   help="seconds before a silent peer is declared dead (where a collective "
                        "with a dead peer blocks rather than fails, as NCCL's may)")
    g.add_argument("--shutdown_timeout", type=int, default=300)
    g.add_argument("--stall_timeout", type=float, default=900,
                   help="with --nproc_per_host: end the job if a worker makes no step for this "
                        "many seconds (0: off)")
    g.add_argument("--startup_timeout", type=float, default=1800,
                   help="with --nproc_per_host: end the job if a worker has not made its first "
                        "step this many seconds after it started (joining, NCCL set-up, first "
                        "compile and collective; 0: off)")
    g.add_argument("--max_restarts", type=int, default=0,
                   help="with --nproc_per_host: restart failed local workers this many times")
    g.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    g.add_argument("--workers_per_host", type=int, default=1, help=argparse.SUPPRESS)
    return p


def main():
    args = parser().parse_args()
    if args.nproc_per_host:
        return supervise(args)
    from jaxocr import distributed
    cli.set_cpu_devices(args.cpu_devices_per_process or args.cpu_devices)
    cfg = cli.load(args)  # config errors surface before waiting for peers
    cluster = distributed.cluster_from_flags(
        args.ips, args.start_port, args.coordinator, args.num_processes, args.process_id,
        args.gpus, args.workers_per_host, args.local_rank, args.coordinator_bind_address)
    distributed.initialize(cluster, args.init_timeout, args.heartbeat_timeout,
                           args.shutdown_timeout)
    from jaxocr.training.loop import train
    train(cfg)


def supervise(args):
    """Start --nproc_per_host workers on this host and watch them. With --coordinator,
    --num_processes and --process_id count hosts here, not workers."""
    import socket
    from jaxocr.distributed import (LaunchError, host_rank_from_ips, local_gpu_count,
                                    split_local_devices)
    from jaxocr.launcher import Supervisor
    k = args.nproc_per_host
    cli.load(args)  # fail on a bad config here, once, not in every worker
    if args.ips:
        host_rank_from_ips([ip.strip() for ip in args.ips.split(",") if ip.strip()])

        def place(rank):
            return ["--ips", args.ips, "--start_port", str(args.start_port),
                    "--workers_per_host", str(k), "--local_rank", str(rank)]
    else:
        coordinator = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
        if coordinator:
            if args.num_processes is None or args.process_id is None:
                raise LaunchError("--coordinator with --nproc_per_host needs --num_processes "
                                  "(hosts) and --process_id (this host's rank)")
            hosts, host_rank = args.num_processes, args.process_id
        else:
            hosts, host_rank = 1, 0
            with socket.socket() as s:  # a free local port for this host's own job
                s.bind(("127.0.0.1", 0))
                coordinator = f"127.0.0.1:{s.getsockname()[1]}"

        def place(rank):
            return ["--coordinator", coordinator, "--num_processes", str(hosts * k),
                    "--process_id", str(host_rank * k + rank)]
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    found = ""
    if gpus:
        split = split_local_devices(k, gpus)
    else:  # counted without starting JAX (which would claim the GPUs in this process)
        count, found = local_gpu_count()
        split = split_local_devices(k, gpu_count=count)
    if split:
        import logging
        logging.getLogger("jaxocr").info(
            "launcher: %d workers over GPUs %s%s: %s", k, ",".join(sum(split, [])),
            f" ({found})" if found else "",
            "; ".join(f"worker {r}: {','.join(ids)}" for r, ids in enumerate(split)))
    common = [sys.executable, os.path.abspath(__file__), "-c", args.config,
              "--init_timeout", str(args.init_timeout),
              "--heartbeat_timeout", str(args.heartbeat_timeout),
              "--shutdown_timeout", str(args.shutdown_timeout)]
    for group in args.opt:
        common += ["-o", *group]
    if args.eval:
        common += ["--eval"]
    if args.cpu_devices_per_process:
        common += ["--cpu_devices_per_process", str(args.cpu_devices_per_process)]
    if args.coordinator_bind_address:
        common += ["--coordinator_bind_address", args.coordinator_bind_address]
    commands = []
    for rank in range(k):
        cmd = common + place(rank)
        if split:
            cmd += ["--gpus", ",".join(split[rank])]
        commands.append(cmd)
    return Supervisor(commands, args.log_dir, args.stall_timeout, args.max_restarts,
                      startup_timeout=args.startup_timeout).run()


if __name__ == "__main__":
    sys.exit(cli.run(main) or 0)
