"""``--serve --ray``: the same app as a Ray Serve deployment, ``--num_replicas`` copies of the model behind it.

Each replica loads the model itself (:func:`~finetuning.inference.serving.build_engine`) and serves the app
:func:`~finetuning.inference.server.build_app` builds, so answers are those of the uvicorn server. Ray is the
cluster named by ``RAY_ADDRESS``, else a local one bound to the loopback address; Serve's proxy listens on
``--host``/``--port``. Ctrl-C or SIGTERM deletes the application and shuts the local Ray down.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from finetuning.errors import UserError
from finetuning.inference.arguments import InferenceArguments
from finetuning.inference.serve_arguments import ServeArguments

APP_NAME = "finetuning"
# Ray advertises a local node on the machine's network address unless its cluster mode is off (as on macOS): off,
# every Ray process binds 127.0.0.1. Read when ray is imported; Ray's processes inherit it.
LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _bind_replica_grpc_to_loopback() -> None:
    """Ray Serve replicas open their inter-deployment gRPC port on every interface ("[::]:0") whatever the node's
    address; on a local Ray bound to 127.0.0.1, bind that port there too (other Ray versions: left as they are)."""
    from ray.serve._private import replica

    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is not None:
        replica.add_port_to_grpc_server = lambda server, address: original(server, address.replace("[::]", "127.0.0.1"))


class _Replica:
    """One replica: the model, its engine, and (through ``__serve_build_asgi_app__``) the app serving them."""

    def __init__(self, args: InferenceArguments, serve_args: ServeArguments) -> None:
        from finetuning.inference.serving import build_engine

        if os.environ.get(LOCAL_ONLY) == "0":
            _bind_replica_grpc_to_loopback()
        self.engine, self.settings = build_engine(args, serve_args)

    def __serve_build_asgi_app__(self) -> Any:
        from finetuning.inference.server import build_app

        return build_app(self.engine, self.settings)

    def __del__(self) -> None:
        self.engine.close()


def _import_ray() -> Any:
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault(LOCAL_ONLY, "0")
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UserError("--ray needs Ray Serve: pip install -r requirements-ray.txt", field="ray") from None
    return ray, serve


def deploy(args: InferenceArguments, serve_args: ServeArguments) -> str:
    """Start (or join) Ray and Serve, deploy the app, and return its URL once every replica is ready."""
    ray, serve = _import_ray()
    from finetuning.inference.serving import served_name

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        local = {} if address else {"include_dashboard": False}
        ray.init(address=address or None, log_to_driver=False, **local)
    serve.start(http_options={"host": serve_args.host, "port": serve_args.port})
    deployment = serve.deployment(
        serve.ingress()(_Replica),
        name="model",
        num_replicas=serve_args.num_replicas,
        ray_actor_options={"num_cpus": 0},  # generation threads are torch's; do not make Ray reserve cores
        max_ongoing_requests=max(4 * serve_args.max_batch_size, 64),
        graceful_shutdown_timeout_s=5,  # on shutdown, requests still running get this long to finish
    )
    prefix = serve_args.route_prefix or "/"
    serve.run(deployment.bind(args, serve_args), name=APP_NAME, route_prefix=prefix, blocking=False)
    url = f"http://{serve_args.host}:{serve_args.port}{serve_args.route_prefix}/v1"
    print(f"serving '{served_name(args, serve_args)}' on Ray Serve at {url} (Ctrl-C stops)", flush=True)
    return url


def shutdown() -> None:
    """Delete the app; on a local Ray, stop Serve and Ray too (a cluster's other apps are left alone)."""
    ray, serve = _import_ray()
    if not ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        serve.delete(APP_NAME)
    else:
        serve.shutdown()
    ray.shutdown()


def serve_on_ray(args: InferenceArguments, serve_args: ServeArguments) -> dict[str, Any]:
    stop = threading.Event()
    # Ctrl-C and SIGTERM wait until the handlers below are in place: Ray installs its own while it starts, and a
    # signal arriving then (a client may already be served before serve.run returns) would abort the process
    # instead of shutting Serve down. Threads Ray starts meanwhile inherit the mask and never take them either.
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        url = deploy(args, serve_args)
        for number in signals:
            signal.signal(number, lambda *_: stop.set())
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
    try:
        stop.wait()
    finally:
        shutdown()
    print("Ray Serve shut down", flush=True)
    return {"served": serve_args.served_model_name, "url": url}
