"""The Ray a sweep runs on: an embedded local one (on loopback only) unless an address
names a cluster or Ray is up already, checked to fit one chain of every grid cell."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from collapse_ray.sweep.interrupts import Signalled, raise_if_interrupted, ray_starting
from collapse_ray.sweep.spec import SweepSpec
from collapse_ray.tasks.protocol import ChecksCluster, offers


class NotOnLoopback(Exception):
    """The embedded Ray came up on a routable node IP, so its servers listen beyond this machine."""


@contextmanager
def ray_for_sweep(spec: SweepSpec, address: str | None) -> Iterator[None]:
    """Ray, up for the block (shut down after it when it was started here); before anything is
    written, a chain that cannot be placed on it is a SpecError."""
    owns_ray = not ray.is_initialized()
    if owns_ray:
        _start_ray(address or os.environ.get("RAY_ADDRESS"))
    try:
        _check_fits_cluster(spec)
        yield
    finally:
        if owns_ray:
            ray.shutdown()


def _start_ray(address: str | None) -> None:
    try:
        with ray_starting():
            if address:
                ray.init(address=address, logging_level="WARNING")
            else:
                # An embedded local Ray ("local": never a cluster some `ray start` left running);
                # the dashboard is only needed for `ray job submit`.
                ray.init(address="local", include_dashboard=False, logging_level="WARNING", configure_logging=True)
                _refuse_unless_on_loopback()
        raise_if_interrupted()  # a signal while Ray was starting: stop what it started
    except Signalled:
        ray.shutdown()
        raise


def _refuse_unless_on_loopback() -> None:
    """Stop the embedded Ray unless its node IP is a loopback address. Ray 2.60 binds its
    servers to loopback only then, and to every interface otherwise; the CLI sets
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before ray is imported to get there, a knob Ray
    documents for macOS and Windows only, so a Ray that ignores it must not go unnoticed."""
    node_ip = ray.util.get_node_ip_address()
    address = ipaddress.ip_address(node_ip)
    if (getattr(address, "ipv4_mapped", None) or address).is_loopback:
        return
    ray.shutdown()
    raise NotOnLoopback(f"the embedded Ray's node IP is {node_ip}, not a loopback address, so its servers would "
                        "listen on every interface; run with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 set before ray is "
                        "imported (collapse-ray run sets it unless it is set already), or pass --address")


def _check_fits_cluster(spec: SweepSpec) -> None:
    """Tasks that place work of their own on the cluster (Ray Train workers, Ray Data
    actors) check that one chain fits it, before any trial starts."""
    cpus = ray.cluster_resources().get("CPU", 0)
    for point in spec.points:
        if offers(point.task, ChecksCluster):
            point.task.check_cluster(spec.run, cpus, point.key)
