"""Joining a real Ray cluster as docs/cluster.md tells a user to: `ray start --head` on loopback only, with Ray's
token authentication; the search's trials run in the cluster's worker processes (not the driver's), one of them is
killed mid-trial and its trial runs again; the user's mistakes are one line and exit 2.

Every process this module starts is in a process group of its own and is killed by group at the end. Nothing binds
to or contacts an address other than 127.0.0.1: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from replacing
127.0.0.1 with the machine's network address (it does so on Linux, to let other nodes join; with it Ray accepts no
second node, so the cluster here is a head whose worker processes run the trials).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the venv's `ray` CLI, whatever PATH holds
N_TRIALS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class LoopbackCluster:
    """A Ray head with 2 CPUs, on 127.0.0.1 only, in a temporary directory of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token = root / "auth_token"
        self.token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
        self.token.chmod(0o600)
        # Token mode for every process of the cluster, the token read from our own file (never ~/.ray).
        inherited = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env = {
            **inherited,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.procs: list[subprocess.Popen] = []
        self.head: subprocess.Popen | None = None

    def _ray_start(self, name: str, *args: str) -> subprocess.Popen:
        with (self.root / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(
                [
                    *RAY,
                    "start",
                    "--block",
                    "--node-ip-address=127.0.0.1",
                    "--disable-usage-stats",
                    f"--temp-dir={self.root / 'ray'}",
                    *args,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def _wait_started(self, name: str, proc: subprocess.Popen, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in (self.root / f"{name}.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (self.root / f"{name}.log").read_text()
            time.sleep(0.2)

    def start_head(self) -> None:
        self.head = self._ray_start(
            "head", "--head", f"--port={self.port}", "--num-cpus=2", "--include-dashboard=false"
        )

    def stop(self) -> None:
        """SIGKILL every process the cluster started, by process group, then any descendant left in another."""
        pids = [pid for p in self.procs for pid in _descendants(p.pid)]
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="ap-ray-", dir="/tmp"))  # short: Ray's socket paths live under it
    c = LoopbackCluster(root)
    try:
        c.start_head()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _search_cmd(out: Path, data_root: Path, address: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autoprune.cli",
        "search",
        "--preset",
        "smoke",
        "--quiet",
        "--out",
        str(out),
        "--set",
        f"data.root={data_root}",
        "--set",
        "search.backend=ray",
        "--set",
        f"search.ray.address={address}",
        "--set",
        "search.ray.cpus_per_trial=1",
        "--set",
        "search.ray.max_concurrent=1",
        "--set",
        "search.pruner=none",
        "--set",
        f"search.n_trials={N_TRIALS}",
        *extra,
    ]


def _user_mistakes(c: LoopbackCluster, tmp_path: Path, data_root: Path) -> dict[str, subprocess.Popen]:
    """The driver's mistakes, each run as a user would (a process of its own): all fail before any data."""
    nothing_there = f"127.0.0.1:{_free_port()}"
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    no_token = {k: v for k, v in c.env.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(tmp_path)}
    old_ray = "import sys, ray; ray.__version__ = '2.0.0'; from autoprune.cli import main; sys.exit(main(sys.argv[1:]))"
    cases = {
        "no token": (_search_cmd(tmp_path / "a", data_root, c.address), no_token),
        "wrong token": (_search_cmd(tmp_path / "b", data_root, c.address), c.env | {"RAY_AUTH_TOKEN_PATH": str(wrong)}),
        "wrong address": (_search_cmd(tmp_path / "c", data_root, nothing_there), c.env),
        "other Ray version": (
            [sys.executable, "-c", old_ray, *_search_cmd(tmp_path / "d", data_root, c.address)[3:]],
            c.env,
        ),
    }
    return {
        name: subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        for name, (cmd, env) in cases.items()
    }


@pytest.mark.slow
def test_search_on_a_loopback_cluster(cluster, smoke_run, tmp_path):
    _, smoke_root = smoke_run
    data_root = smoke_root / "data"  # the smoke run's synthetic data and cached baseline
    cluster._wait_started("head", cluster.head)
    mistakes = _user_mistakes(cluster, tmp_path, data_root)
    expected = {
        "no token": "requires token authentication and this machine has no token",
        "wrong token": "rejected the authentication token from RAY_AUTH_TOKEN_PATH",
        "wrong address": "nothing answers at search.ray.address",
        "other Ray version": "runs Ray: ",
    }
    errors = {}
    for name, proc in mistakes.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, out, err)
        assert "Traceback" not in err, (name, err)
        errors[name] = [ln for ln in err.splitlines() if ln.startswith("autoprune: error:")]
        assert len(errors[name]) == 1 and expected[name] in errors[name][0], (name, err)
    assert "this machine has Ray: 2.0.0" in errors["other Ray version"][0]

    # The search, with the token file the head uses; killed: the first trial process seen running a trial.
    out = tmp_path / "run"
    driver = subprocess.Popen(
        _search_cmd(out, data_root, cluster.address),
        env=cluster.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    trial_pids: set[int] = set()
    killed = None
    try:
        while driver.poll() is None:
            for pid in _descendants(cluster.head.pid):
                if "ImplicitFunc" in _cmdline(pid):
                    trial_pids.add(pid)
                    if killed is None and ".train" in _cmdline(pid):
                        os.kill(pid, signal.SIGKILL)  # mid-trial: the trial's train() call is running
                        killed = pid
            time.sleep(0.2)
        printed = driver.communicate(timeout=30)[0]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, printed
    assert killed is not None, printed
    assert "lost its worker" in printed and "running it again" in printed, printed

    trials = json.loads((out / "report.json").read_text())["trials"]
    assert [t["number"] for t in trials] == list(range(N_TRIALS))
    assert {t["state"] for t in trials} == {"COMPLETE"}, trials
    # Every trial ran in one of the cluster's worker processes, none in the driver.
    for t in trials:
        assert t["worker"]["pid"] in trial_pids - {killed, driver.pid}, (t["worker"], trial_pids)
        assert t["worker"]["node_id"] == trials[0]["worker"]["node_id"]
    # The killed trial ran again, once; the others ran once.
    assert sorted(t["worker"]["retries"] for t in trials) == [0] * (N_TRIALS - 1) + [1], trials


# -- the pieces, without a cluster ----------------------------------------------------------------------------
def test_probe_reports_what_a_node_lacks(tmp_path, monkeypatch):
    from autoprune.search.ray_cluster import _probe_fn, node_problem

    probe = _probe_fn()
    found = probe({"data.root": (str(tmp_path), False), "the run directory (--out)": (str(tmp_path / "no"), True)})
    assert found["problems"] == [f"the run directory (--out) {tmp_path / 'no'} does not exist"]
    assert node_problem(found, "10.0.0.2").startswith(
        f"the run directory (--out) {tmp_path / 'no'} does not exist on Ray node 10.0.0.2"
    )
    assert probe({"data.root": (str(tmp_path), False)})["problems"] == []
    assert node_problem(probe({"data.root": (str(tmp_path), True)}), "10.0.0.2") is None

    monkeypatch.setitem(sys.modules, "autoprune", None)  # as on a node where it is not installed
    found = probe({})
    monkeypatch.undo()
    assert "import_error" in found
    assert node_problem(found, "10.0.0.2").startswith("autoprune is not importable on Ray node 10.0.0.2")
    other = {"host": "h", "python": "p", "autoprune": "0.0.1", "problems": []}
    assert "has autoprune 0.0.1 but this machine has" in node_problem(other, "10.0.0.2")


def test_join_errors_name_the_cause():
    from autoprune.search.ray_cluster import join_error

    def chained(*messages: str) -> BaseException:
        exc: BaseException | None = None
        for m in reversed(messages):  # Ray raises the outer one "from" the inner one
            try:
                raise ConnectionError(m) from exc
            except ConnectionError as e:
                exc = e
        return exc

    auth = chained(
        "Failed to connect to Ray cluster at h:1",
        "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing or incorrect",
    )
    assert "has no token" in str(join_error("h:1", auth, "disabled", None))
    assert "rejected the authentication token from ~/t" in str(join_error("h:1", auth, "token", "~/t"))
    version = chained(
        "Version mismatch: The cluster was started with:\n    Ray: 2.60.0\n    Python: 3.11.7\n"
        "This process on node 1 was started with:\n    Ray: 2.59.0\n    Python: 3.11.7\n"
    )
    msg = str(join_error("h:1", version, "token", "~/t"))
    assert "runs Ray: 2.60.0 Python: 3.11.7 but this machine has Ray: 2.59.0" in msg and "ray[tune]==2.60.0" in msg
    assert "\n" not in msg


def test_unreachable_addresses_fail_at_once(monkeypatch):
    from ray._private import services

    from autoprune.errors import UserError
    from autoprune.search import ray_cluster

    # Ray on Linux swaps a loopback host for the machine's address; a head on loopback does not answer there.
    monkeypatch.setattr(services, "canonicalize_bootstrap_address", lambda addr, temp_dir=None: "192.0.2.99:6379")
    refused = ConnectionRefusedError(111, "Connection refused")
    monkeypatch.setattr(ray_cluster, "_answers", lambda hp: None if hp[0] == "127.0.0.1" else refused)
    with pytest.raises(UserError, match="replaces the loopback address .* RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"):
        ray_cluster._check_reachable("127.0.0.1:6379")
    monkeypatch.setattr(ray_cluster, "_answers", lambda hp: refused)
    with pytest.raises(UserError, match=r"nothing answers at search.ray.address 127.0.0.1:6379 \(Connection refused\)"):
        ray_cluster._check_reachable("127.0.0.1:6379")
    with pytest.raises(UserError, match="is not HOST:PORT"):
        ray_cluster._check_reachable("head-without-port")
