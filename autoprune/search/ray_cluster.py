"""Joining a running Ray cluster (``search.ray.address``) and checking, before any trial, that its nodes can run one.

Ray's token authentication is used as Ray documents it (https://docs.ray.io/en/latest/ray-security/token-auth.html):
the token comes from ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token`` (where
``ray get-auth-token --generate`` writes it). With ``RAY_AUTH_MODE`` unset and a token available, the driver turns
token mode on, as Ray itself does for a local cluster; it never turns authentication off.

Every failure to join or to run on the nodes is a :class:`UserError` naming the cause and the fix.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from autoprune.errors import UserError

CONNECT_SECONDS = 5  # Ray retries a refused join for 20 s by default; the cause is known after the first tries
PROBE_SECONDS = 120  # a node may need to start a Python worker process (and import torch) for the probe
TOKEN_DOCS = "https://docs.ray.io/en/latest/ray-security/token-auth.html"


def token_source() -> str | None:
    """Where Ray will read the authentication token from (its own order of precedence), or None if nowhere."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH ({path})"
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() and default.stat().st_size > 0 else None


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of an address (``ray://`` allowed); None for ``auto`` (Ray looks it up on this machine)."""
    if address == "auto":
        return None
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UserError(
            f"search.ray.address {address!r} is not HOST:PORT (the head's GCS port, 6379 unless "
            f"`ray start --head --port` chose another) or auto"
        )
    return host.strip("[]"), int(port)


def _answers(host_port: tuple[str, int]) -> OSError | None:
    try:
        socket.create_connection(host_port, timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        return exc
    return None


def _check_reachable(address: str) -> None:
    """Fail in a second, not after Ray's minutes of retries, when nothing listens where Ray will connect."""
    given = _host_port(address)
    if given is None:
        return
    target = given
    if "://" not in address:  # Ray swaps a loopback host for this machine's network address (unless told not to)
        from ray._private.services import canonicalize_bootstrap_address

        target = _host_port(canonicalize_bootstrap_address(address) or address) or given
    refused = _answers(target)
    if refused is None:
        return
    if target != given and _answers(given) is None:
        raise UserError(
            f"Ray here replaces the loopback address in search.ray.address {address} with this machine's "
            f"address {target[0]}, where nothing answers: the head listens on loopback only, so run the "
            f"search with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 too, as the head was started "
            f"(docs/cluster.md), or start the head on the network address"
        )
    raise UserError(
        f"nothing answers at search.ray.address {address} ({refused.strerror or refused}): start the "
        f"head there with `ray start --head --port={given[1]}`, or fix the address (the head prints it)"
    )


def _auth_mode() -> str:
    """Turn token mode on when RAY_AUTH_MODE is unset and a token is available; returns the mode in effect."""
    try:  # Ray >= 2.52: what ray.init does for a local cluster, also for an explicit address
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # pragma: no cover - a Ray without token authentication
        return "disabled"
    if os.environ.get("RAY_AUTH_MODE") is None and token_source() is not None:
        quiet = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its warning says how to opt out of authentication; we never do
        try:
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        finally:
            quiet.setLevel(level)
    return os.environ.get("RAY_AUTH_MODE", "disabled").lower()


def _chain_text(exc: BaseException) -> str:
    parts, seen = [], set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


def join_error(address: str, exc: BaseException, mode: str, source: str | None) -> UserError:
    """The real cause of a failed ``ray.init(address=...)``, read from Ray's exception chain, as one line."""
    text = _chain_text(exc)
    if "Version mismatch" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(("Ray:", "Python:"))]
        theirs, ours = " ".join(lines[:2]), " ".join(lines[2:4])
        return UserError(
            f"the Ray cluster at {address} runs {theirs} but this machine has {ours}: install the "
            f"same Ray and Python versions on the driver and every node (pip install 'ray[tune]=="
            f"{lines[0].split()[-1] if lines else '<cluster version>'}')"
        )
    if "Unauthenticated" in text or "InvalidAuthToken" in text:
        if mode != "token":
            return UserError(
                f"the Ray cluster at {address} requires token authentication and this machine has no "
                f"token (RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE', 'unset')}): copy the head's token "
                f"(`ray get-auth-token` on the head) to ~/.ray/auth_token here, or set RAY_AUTH_TOKEN_PATH "
                f"to a file holding it; see {TOKEN_DOCS}"
            )
        return UserError(
            f"the Ray cluster at {address} rejected the authentication token from {source}: use the "
            f"head's token (`ray get-auth-token` on the head); see {TOKEN_DOCS}"
        )
    if "AuthenticationError" in text:
        return UserError(
            f"RAY_AUTH_MODE=token but no Ray authentication token was found: copy the head's token "
            f"(`ray get-auth-token` on the head) to ~/.ray/auth_token here, or point RAY_AUTH_TOKEN_PATH "
            f"at it; see {TOKEN_DOCS}"
        )
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    return UserError(
        f"cannot join the Ray cluster at {address}: {first[:300]}; check search.ray.address "
        f"(`ray status` on the head shows it)"
    )


def join(address: str) -> str:
    """Connect this process to the running cluster at ``address``; returns how it authenticated (for the log)."""
    _check_reachable(address)
    mode = _auth_mode()
    source = token_source() if mode == "token" else None
    ours = "RAY_gcs_server_port_wait_time_s" not in os.environ
    if ours:
        os.environ["RAY_gcs_server_port_wait_time_s"] = str(CONNECT_SECONDS)
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises several types; the chain's text tells the cause
        ray.shutdown()
        raise join_error(address, exc, mode, source) from None
    finally:
        if ours:
            os.environ.pop("RAY_gcs_server_port_wait_time_s", None)
    return f"token from {source}" if source else f"authentication {mode}"


# -- the probe: one small task on every node, before any trial ------------------------------------------------
def _probe_fn() -> Callable[[dict[str, tuple[str, bool]]], dict[str, Any]]:
    """The probe as a function pickled by value (defined locally), so it runs where autoprune cannot be imported."""

    def probe(paths: dict[str, tuple[str, bool]]) -> dict[str, Any]:
        import os
        import socket
        import sys
        import tempfile

        out: dict[str, Any] = {"host": socket.gethostname(), "python": sys.executable, "problems": []}
        try:
            import autoprune

            out["autoprune"] = autoprune.__version__
        except Exception as exc:  # noqa: BLE001 - any import failure means trials cannot run here
            out["import_error"] = f"{type(exc).__name__}: {exc}"
        for key, (path, write) in paths.items():
            if not os.path.isdir(path):
                out["problems"].append(f"{key} {path} does not exist")
            elif not os.access(path, os.R_OK | os.X_OK):
                out["problems"].append(f"{key} {path} is not readable")
            elif write:
                try:
                    tempfile.TemporaryFile(dir=path).close()
                except OSError as exc:
                    out["problems"].append(f"{key} {path} is not writable ({exc.strerror})")
        return out

    return probe


def node_problem(found: dict[str, Any], ip: str) -> str | None:
    """What keeps trials from running on a node, from its probe's answer; None when nothing does."""
    import autoprune

    where = f"Ray node {ip} ({found['host']}, {found['python']})"
    if "import_error" in found:
        return (
            f"autoprune is not importable on {where}: {found['import_error']}; install autoprune in the Python "
            f"environment that runs Ray there (the `ray` that started the node must be that environment's), "
            f"then restart Ray on that node"
        )
    if found["autoprune"] != autoprune.__version__:
        return (
            f"{where} has autoprune {found['autoprune']} but this machine has {autoprune.__version__}: install "
            f"the same version on every node"
        )
    if found["problems"]:
        return (
            f"{found['problems'][0]} on {where}: trials read and write it there, so put it on a filesystem "
            f"every node mounts at the same path (see docs/cluster.md)"
        )
    return None


def check_nodes(paths: dict[str, tuple[str, bool]], log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the probe once on every alive node that has CPUs; raise the first problem as a UserError.

    ``paths`` maps a config key to (absolute path, needs writing)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import autoprune

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if not nodes:
        raise UserError(
            "the Ray cluster has no node with CPUs to run trials: start a worker with "
            "`ray start --address=HEAD:PORT --num-cpus=N`"
        )
    remote = ray.remote(num_cpus=0, max_retries=0)(_probe_fn())
    refs = {
        n["NodeManagerAddress"]: remote.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(paths)
        for n in nodes
    }
    _, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_SECONDS)
    if pending:
        slow = [ip for ip, ref in refs.items() if ref in pending]
        raise UserError(
            f"Ray node(s) {', '.join(slow)} did not run a 1-second check in {PROBE_SECONDS} s: see "
            f"`ray status` and the node's logs (/tmp/ray/session_latest/logs)"
        )
    results = []
    for ip, ref in refs.items():
        try:
            found = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the node could not even start the task (a broken environment)
            raise UserError(
                f"Ray node {ip} cannot run a task ({str(exc).splitlines()[0][:200]}): check its Python environment"
            ) from None
        problem = node_problem(found, ip)
        if problem:
            raise UserError(problem)
        results.append({**found, "ip": ip})
    shared = f"; {', '.join(paths)} reachable" if paths else ""
    log(f"ray: checked {len(results)} node(s): autoprune {autoprune.__version__} importable{shared}")
    return results


def check_cluster(address: str) -> None:
    """Join, check that every node can import autoprune, and leave: run before the baseline is trained, so a
    wrong address, token or Ray version costs seconds. The search joins again for its trials."""
    if ray.is_initialized():
        check_nodes({}, log=lambda _: None)
        return
    join(address)
    try:
        check_nodes({}, log=lambda _: None)
    finally:
        ray.shutdown()
