"""Checks a Ray stage passes before any training starts, each failing in seconds with a message naming the problem:
Ray installed, a cluster answering at the address, enough resources for the workers, storage they can write."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any

from tasks.config import ScaleOutSettings

__all__ = [
    "RAY_INSTALL_HINT",
    "RaySetupError",
    "check_resources",
    "check_storage",
    "cluster_address",
    "import_ray",
    "wait_for_answer",
]

RAY_INSTALL_HINT = "pip install -e .[ray]"


class RaySetupError(RuntimeError):
    """The Ray cluster or the `scale_out` settings cannot run the stage; nothing was trained."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise RaySetupError(
            f"scale_out.backend is 'ray' but Ray is not installed ({error}); install it with `{RAY_INSTALL_HINT}`"
        ) from None
    return ray


def cluster_address(scale_out: ScaleOutSettings) -> str:
    """``scale_out.address``, else ``$RAY_ADDRESS``."""
    address = scale_out.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise RaySetupError(
            "scale_out.backend is 'ray' but neither scale_out.address nor RAY_ADDRESS names the cluster "
            "(e.g. 127.0.0.1:6379 after `ray start --head`, or ray://head:10001)"
        )
    return address


def wait_for_answer(address: str, *, timeout_s: float = 3.0) -> None:
    """A TCP connection to ``host:port`` (ray.init would retry for a minute before saying anything)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as error:
        raise RaySetupError(
            f"no Ray cluster answers at {address} ({error}): start one (`ray start --head`) or fix "
            "scale_out.address / RAY_ADDRESS"
        ) from None


def check_resources(ray: Any, scale_out: ScaleOutSettings, address: str) -> None:
    """The cluster holds num_workers x resources_per_worker (a GPU per worker with use_gpu) in all."""
    per_worker = dict(scale_out.resources_per_worker)
    if scale_out.use_gpu:
        per_worker.setdefault("GPU", 1.0)
    total = ray.cluster_resources()
    for name, amount in sorted(per_worker.items()):
        needed = amount * scale_out.num_workers
        if total.get(name, 0.0) < needed:
            raise RaySetupError(
                f"the Ray cluster at {address} has {name}: {total.get(name, 0.0):g} in all, fewer than "
                f"scale_out.num_workers {scale_out.num_workers} x resources_per_worker {name}: {amount:g} = "
                f"{needed:g}"
            )


def _probe(folder: str) -> str | None:
    """Runs on a cluster node: create ``folder`` and write a file in it; the error text, or None."""
    try:
        if "://" in folder:
            import pyarrow.fs

            fs, path = pyarrow.fs.FileSystem.from_uri(folder)
            fs.create_dir(path, recursive=True)
            probe = f"{path}/.rlhf-write-probe-{uuid.uuid4().hex}"
            with fs.open_output_stream(probe) as stream:
                stream.write(b"ok")
            fs.delete_file(probe)
        else:
            Path(folder).mkdir(parents=True, exist_ok=True)
            probe = Path(folder) / f".rlhf-write-probe-{uuid.uuid4().hex}"
            probe.write_text("ok")
            probe.unlink()
    except Exception as error:  # any failure means the workers could not write there either
        return f"{type(error).__name__}: {error}"
    return None


def check_storage(ray: Any, folders: dict[str, str]) -> None:
    """Every alive node can create and write each of ``folders`` ({setting name: path or URI})."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    pending = {
        (name, node["NodeManagerAddress"]): probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(folder)
        for node in nodes
        for name, folder in folders.items()
    }
    for (name, node), ref in pending.items():
        error = ray.get(ref, timeout=60)
        if error is not None:
            raise RaySetupError(
                f"{name} {folders[name]!r} is not writable from Ray node {node} ({error}); give a folder every "
                "node mounts read-write, or an fsspec URI"
            )
