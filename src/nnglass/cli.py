"""The `nnglass` command: `serve` models, manage API `keys`, show a server's `status`, run the `demo`."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .remote.schema import ModelInfo
    from .server.hosting import Hosting
    from .server.limits import Limits

DEFAULT_DB = "nnglass.db"


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); the exit status."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        args.options = rest  # the demo parses its own options
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.run(args)
    except (LookupError, ValueError, RuntimeError) as error:
        print(f"nnglass {args.command}: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnglass", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="host models for remote=True runs")
    serve.add_argument("--model", action="append", required=True, metavar="NAME",
                       help="'smollm2', or a transformers repo id or checkpoint path (repeatable)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    _db_option(serve)
    serve.add_argument("--data", metavar="DIR", help="folder for request bodies and results "
                                                     "(default: <db name>-jobs next to a SQLite --db)")
    serve.add_argument("--max-request-mb", type=float, default=256, help="largest request (default: %(default)s)")
    serve.add_argument("--max-nodes", type=int, default=100_000, help="most graph nodes per request")
    serve.add_argument("--job-timeout", type=float, default=600, help="seconds a job may run (default: %(default)s)")
    serve.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                       help="run each job in a forked process (default: on Linux when the weights are on the CPU)")
    serve.add_argument("--job-memory-gb", type=float, default=8, help="memory a forked job may add (default: 8)")
    serve.add_argument("--batch-size", type=int, default=8,
                       help="most queued jobs run as one forward (default: %(default)s; 1: no batching)")
    serve.add_argument("--batch-window-ms", type=float, default=5,
                       help="how long a job waits for others to share its forward (default: %(default)s)")
    serve.add_argument("--device", help="where the weights go: cpu, cuda, cuda:1, ... (default: as loaded; "
                                        "with --ray, cuda when the replica has a GPU)")
    serve.add_argument("--dtype", help="weight dtype: auto (the checkpoint's), float32, bfloat16, float16")
    serve.add_argument("--device-map", help="accelerate's placement: auto, balanced, sequential, or one device")
    serve.add_argument("--ray", metavar="auto|ADDRESS",
                       help="run each model replica as a Ray actor: 'auto' joins the cluster running here "
                            "(or starts one), ADDRESS joins that cluster (e.g. ray://head:10001)")
    serve.add_argument("--replicas", type=int, default=1, help="with --ray: replicas of the models (default: 1)")
    serve.set_defaults(run=_serve)

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key and print its token (shown only this once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    listing = actions.add_parser("list", help="show every key (never the tokens)")
    revoke = actions.add_parser("revoke", help="revoke a key by id or name")
    revoke.add_argument("ref", metavar="NAME_OR_ID")
    for action, run in ((create, _keys_create), (listing, _keys_list), (revoke, _keys_revoke)):
        _db_option(action)
        action.set_defaults(run=run)

    status = commands.add_parser("status", help="show the models a server hosts")
    status.add_argument("--host", help="server URL (default: nnglass.CONFIG.host)")
    status.set_defaults(run=_status)

    demo = commands.add_parser("demo", add_help=False, help="a short tour of nnglass on SmolLM2 (nnglass demo -h)")
    demo.set_defaults(run=_demo)
    return parser


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=DEFAULT_DB,
                        help="SQLite file or SQLAlchemy URL of the key database (default: %(default)s)")


# -- commands ---------------------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    """Load each model once (here, or in Ray actors) and serve them until interrupted."""
    from .server.numerics import use_strict_gemm
    use_strict_gemm()  # before any matrix product: batched jobs then get bit-identical values

    import uvicorn

    from .server import KeyStore, Limits, create_app

    limits = Limits(max_request_bytes=int(args.max_request_mb * 2**20), max_nodes=args.max_nodes,
                    job_timeout_s=args.job_timeout, isolate=args.isolate,
                    max_job_bytes=int(args.job_memory_gb * 2**30), batch_size=args.batch_size,
                    batch_window_s=args.batch_window_ms / 1000)
    hosting = _hosting(args, limits)
    for name, model in hosting.models.items():
        print(f"nnglass serve: hosting {name!r} ({type(model._model).__name__})", file=sys.stderr)
    if not any(key.active for key in KeyStore(args.db).keys()):
        print(f"nnglass serve: no API key yet; make one with `nnglass keys create --name NAME --db {args.db}`",
              file=sys.stderr)
    uvicorn.run(create_app(hosting, args.db, data=args.data), host=args.host, port=args.port)
    return 0


def _hosting(args: argparse.Namespace, limits: Limits) -> Hosting:
    """The backend `serve` asks for: the models loaded in this process, or replicas as Ray actors."""
    from .server.hosting import InProcess
    from .server.loading import Loader

    loaders = [Loader(ref, args.device, args.dtype, args.device_map) for ref in args.model]  # checked before loading
    if args.replicas < 1:
        raise ValueError(f"--replicas must be at least 1, not {args.replicas}")
    if args.ray is None:
        if args.replicas != 1:
            raise ValueError("--replicas needs --ray (in this process every model is loaded once)")
        models = [loader.load() for loader in loaders]
        return InProcess({model._remote_name: model for model in models}, limits)
    from .server.ray_hosting import RayHosting
    return RayHosting(loaders, limits, replicas=args.replicas, address=args.ray)


def _keys_create(args: argparse.Namespace) -> int:
    from .server.keys import KeyStore

    key, token = KeyStore(args.db).create(args.name)
    print(f"created key {key.id} for {key.name!r}. Its token, shown only this once:\n\n    {token}\n\n"
          f"Client: nnglass.CONFIG.set_default_api_key({token!r})")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from .server.keys import KeyStore

    keys = KeyStore(args.db).keys()
    if not keys:
        print("no keys")
    for key in keys:
        state = "active" if key.active else f"revoked {key.revoked:%Y-%m-%d %H:%M}"
        print(f"{key.id:>4}  {key.name:<24}  created {key.created:%Y-%m-%d %H:%M}  {state}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from .server.keys import KeyStore

    key = KeyStore(args.db).revoke(args.ref)
    print(f"revoked key {key.id} ({key.name!r})")
    return 0


def _status(args: argparse.Namespace) -> int:
    """Print the models a server hosts and their queues."""
    import httpx

    from .config import CONFIG
    from .remote.schema import ServerStatus

    host = args.host or CONFIG.host
    try:
        response = httpx.get(f"{host.rstrip('/')}/status", timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise RuntimeError(f"cannot read the status of {host}: {error}") from error
    status = ServerStatus.model_validate(response.json())
    print(f"{host}: nnglass {status.nnglass}, {len(status.models)} model(s)")
    for model in status.models:
        print(f"  {model.name:<32} {model.architecture:<24} {model.parameters:>15,} parameters  "
              f"queue {model.queue}{_figures(model)}")
    return 0


def _figures(model: ModelInfo) -> str:
    """A ModelInfo's job figures as `nnglass status` prints them after its queue ('' from an older server)."""
    if model.running is None:
        return ""
    running = f"{model.running} running" + (f" (for {model.running_s:.1f} s)" if model.running_s is not None else "")
    mean = f", mean {model.mean_s:.2f} s" if model.mean_s is not None else ""
    return (f" ({model.waiting} waiting, {running}); {model.completed_1m} done in the last minute, "
            f"{model.per_minute:.1f}/min over 5 min{mean}")


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.main(args.options)


if __name__ == "__main__":
    sys.exit(main())
