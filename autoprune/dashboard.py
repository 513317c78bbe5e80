"""``autoprune dashboard RUN``: a run's Optuna study in optuna-dashboard (an optional extra), on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoprune.errors import UserError
from autoprune.rundir import refuse_links_out


def dashboard_attrs(record: dict[str, Any]) -> dict[str, Any]:
    """The flat user attributes the dashboard shows for a finished trial: MACs ratio, validation and test
    metrics, the policy (keep ratio per group)."""
    attrs: dict[str, Any] = {"macs_ratio": record.get("macs_ratio"), "policy": record.get("policy")}
    for split, key in (("val", "target_val"), ("test", "target")):
        for metric, value in (record.get(key) or {}).items():
            attrs[f"{split}_{metric}"] = value
    return attrs


def make_server(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8080) -> Any:
    """A WSGI server for the run's study (``port`` 0: any free one); call ``serve_forever()`` on it."""
    from wsgiref.simple_server import make_server as wsgi_server

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535 (0: any free port), got {port}")
    refuse_links_out(run_dir)  # SQLite would follow a study.db link out of the run directory
    db = Path(run_dir) / "study.db"
    if not db.is_file():
        raise UserError(
            f"{run_dir} has no study.db; give the --out folder of an `autoprune search` run "
            f"(a shared search.storage study opens with optuna-dashboard STORAGE_URL)"
        )
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError("optuna-dashboard is not installed; pip install 'autoprune[dashboard]'") from None
    app = optuna_dashboard.wsgi(f"sqlite:///{db.resolve()}")
    try:
        return wsgi_server(host, port, app)
    except OSError as exc:  # the port is in use, or below 1024 without the right to bind it
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port") from None
