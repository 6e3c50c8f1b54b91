"""Every use of JAX's private API (`jax._src`, `jaxlib._jax`) in jaxocr, in one place.

Checked against jax 0.10.0, 0.10.2 (the development machine) and 0.11.0, 0.11.1 (the GPU
machines): same names and signatures in all four. pyproject.toml pins `jax>=0.10,<0.12`; a
newer jax gets a warning at join time (below), and whatever moved then fails here, in one of
these functions, with `Unavailable` naming what is missing. Every caller treats that as
"feature off" with a warning, never as a failed job:

| call | what for | if it is missing |
| --- | --- | --- |
| `jax._src.distributed.global_state.client` | the coordination-service client: key-value store and barrier for the liveness announcement (`job_failure.announce`) | a lost peer is not named (the job still fails fast where the collective fails) |
| `jax._src.distributed.global_state.coordinator_address` | the address the liveness socket is opened towards (this host's route to the coordinator) | as above |
| `jaxlib._jax.make_gloo_tcp_collectives(distributed_client=, hostname=)` | CPU gloo collectives bound to this host's `--ips` address | gloo binds where the hostname resolves (may be unreachable from other hosts) |
| `jax.typeof(x).manual_axis_type.varying` (0.10; `.vma` where a release has it) | the mesh axes a value varies over inside `shard_map` (`varying_axes`), for the fast conv's hand-written kernel gradient (`models/layers.py`) | treated as none: correct under the train step (`check_vma` off); a `check_vma` shard_map then fails in that conv's backward |
| `jax._src.xla_bridge.register_backend_factory("cpu", make_cpu_client(collectives=), priority=0, fail_quietly=False)` | install the CPU client with those collectives before the backend starts | as above |

The client methods `key_value_set(key, value)`, `wait_at_barrier(id, timeout_ms)` and
`key_value_dir_get(prefix)` are used by `job_failure`; they are the client's (pybind) interface,
in `jaxlib/_jax/__init__.pyi`, unchanged across the versions above.
"""
from __future__ import annotations

import functools
import logging

log = logging.getLogger("jaxocr")

CHECKED = ((0, 10), (0, 11))  # minor versions whose private API was read for this module


class Unavailable(RuntimeError):
    """A private JAX API this module needs is not there (a jax version not checked)."""


def _distributed_state():
    try:
        from jax._src import distributed
        return distributed.global_state
    except (ImportError, AttributeError) as e:
        raise Unavailable(f"jax._src.distributed.global_state: {e}") from None


def distributed_client():
    """The coordination-service client of `jax.distributed.initialize` (None before it)."""
    state = _distributed_state()
    try:
        return state.client
    except AttributeError as e:
        raise Unavailable(f"jax._src.distributed.global_state.client: {e}") from None


def coordinator_address() -> str | None:
    state = _distributed_state()
    try:
        return state.coordinator_address
    except AttributeError as e:
        raise Unavailable(f"jax._src.distributed.global_state.coordinator_address: {e}") from None


def bind_cpu_gloo(hostname: str):
    """Make the CPU backend (not yet started) use gloo TCP collectives that listen on
    `hostname`. Call after `jax.distributed.initialize`, before any computation."""
    try:
        from jax._src import xla_bridge
        from jax._src.lib import _jax
        make = _jax.make_gloo_tcp_collectives
        register, make_cpu = xla_bridge.register_backend_factory, xla_bridge.make_cpu_client
    except (ImportError, AttributeError) as e:
        raise Unavailable(f"gloo collectives / CPU backend factory: {e}") from None
    client = distributed_client()
    if client is None:
        raise Unavailable("no distributed client (jax.distributed.initialize not called)")
    collectives = make(distributed_client=client, hostname=hostname)
    register("cpu", functools.partial(make_cpu, collectives=collectives), priority=0,
             fail_quietly=False)


def version_checked(version: str | None = None) -> bool:
    """Whether this jax's minor version is one this module was checked against."""
    if version is None:
        import jax
        version = jax.__version__
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) in CHECKED


def warn_if_unchecked():
    import jax
    if not version_checked(jax.__version__):
        log.warning("jax %s is outside the versions jaxocr's private-API uses were checked "
                    "against (%s); if one moved, peer naming or gloo binding is switched off "
                    "with a warning", jax.__version__,
                    ", ".join(f"{a}.{b}.x" for a, b in CHECKED))


def varying_axes(x) -> frozenset:
    """The manual mesh axes `x` varies over inside a `shard_map` with check_vma (empty outside
    one, or with check_vma off)."""
    import jax
    t = jax.typeof(x)
    vma = getattr(t, "vma", None)
    if vma is None:
        mat = getattr(t, "manual_axis_type", None)
        vma = getattr(mat, "varying", None) if mat is not None else None
    return frozenset(vma or ())
