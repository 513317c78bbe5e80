"""Latency budgets: a per-layer latency table measured on the deployment device (NetAdapt's idea).

A table holds, for every distinct convolution of the architecture (with its BatchNorm and ReLU, and for
the parameter-free ops whose channels a group sets: max pooling, residual additions), the measured time
of that layer alone on a coarse grid of its input and output widths, taken from the widths the budget
projection can choose (multiples of ``round_to`` from ``min_keep`` up). Between grid points the time is
interpolated bilinearly: a convolution's work is bilinear in (in, out) channels, so the grid only has to
catch the device's departures from that. What the layers leave out (fixed-width ops, the framework's
per-call overhead) is fitted once against end-to-end timings of whole models pruned to a few uniform
and random widths: ``model = scale * sum(layers) + offset``. Predictions are milliseconds per image at the
table's batch size.

Tables record what they were measured with (device, threads, runtime and its version, architecture, input,
batch) and are refused for another architecture, input or batch. A table is cached by those keys, so a
search that profiles its own machine does it once.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.pruning.groups import PruningGraph
from autoprune.rundir import write_file

FORMAT = "autoprune-latency/1"
RUNTIMES = ("torch", "onnxruntime")
CALIBRATION_KEEP = (1.0, 0.7, 0.45, 0.25)  # uniform keep fractions timed end to end to fit scale/offset

# (module, input shape) -> seconds of each timed run; the real one uses a wall clock, tests a fake one.
Measure = Callable[[nn.Module, tuple[int, ...]], list[float]]


# -- what a table is valid for ------------------------------------------------------------------------
@dataclass(frozen=True)
class TableKey:
    """Everything a measurement depends on; a table is only used where its key says it applies."""

    arch: str
    last_stride: int
    pooling: str
    input_size: tuple[int, int]
    batch: int
    runtime: str
    device: str
    threads: int
    torch: str
    onnxruntime: str | None
    round_to: int
    min_keep: float
    clock: str = "wall"

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def device_name(device: str = "cpu") -> str:
    """A readable name of the device kind a table was measured on, e.g. ``cpu: Intel(R) Xeon(R) ...``."""
    if device.startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name or platform.processor() or platform.machine()}"


def make_key(
    arch: str,
    input_size: tuple[int, int],
    batch: int,
    runtime: str = "torch",
    device: str = "cpu",
    threads: int | None = None,
    last_stride: int = 1,
    pooling: str = "avg",
    round_to: int = 8,
    min_keep: float = 0.1,
    clock: str = "wall",
) -> TableKey:
    """The key of a table measured on this machine with these settings."""
    ort_version = None
    if runtime == "onnxruntime":
        ort_version = _onnxruntime().__version__
    return TableKey(
        arch,
        int(last_stride),
        pooling,
        (int(input_size[0]), int(input_size[1])),
        int(batch),
        runtime,
        device_name(device),
        int(threads or torch.get_num_threads()),
        torch.__version__.split("+")[0],
        ort_version,
        int(round_to),
        float(min_keep),
        clock,
    )


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "runtime onnxruntime is not installed; pip install onnx onnxruntime, or use --runtime torch"
        ) from None
    return onnxruntime


# -- the layers of a model, and the widths they can take ----------------------------------------------
@dataclass
class ConvSite:
    """One convolution of the model, where its widths come from, and the input it sees."""

    name: str
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    in_hw: tuple[int, int]
    bn: bool  # followed directly by its BatchNorm (timed together, as the model runs them)
    relu: bool = False  # and the BatchNorm by a ReLU
    in_group: str | None = None
    out_group: str | None = None
    op: str = "conv"  # or "addrelu" (a ReLU after a residual addition), or "op" (pooling and the like)
    module: str = ""  # the module an "op" site copies

    def shape_key(self) -> tuple:
        return (
            self.op,
            self.module.rsplit(".", 1)[-1] if self.op == "op" else "",
            self.cin,
            self.cout,
            self.kernel,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.in_hw,
            self.bn,
            self.relu,
            self.in_group is None,
            self.out_group is None,
        )


def conv_sites(graph: PruningGraph) -> list[ConvSite]:
    """Every Conv2d in forward order, with the prunable groups that set its input and output widths."""
    model = graph.model
    order: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    ptrs: list[tuple[int, int]] = []  # input and output storage: which op reads which one's result

    def record(name: str, mod: nn.Module, inp: tuple, out: Any) -> None:
        order.append((name, mod, tuple(inp[0].shape)))
        ptrs.append((inp[0].data_ptr(), out.data_ptr() if isinstance(out, torch.Tensor) else -1))

    hooks = [
        m.register_forward_hook(lambda mod, inp, out, _n=n: record(_n, mod, inp, out))
        for n, m in model.named_modules()
        if len(list(m.children())) == 0
    ]
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *graph.input_size, device=device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    owner_in, owner_out = {}, {}
    for gname, g in graph.groups.items():
        owner_out.update({m: gname for m in g.out_modules})
        owner_in.update({m: gname for m in g.in_modules})
    sites: list[ConvSite] = []
    used: set[int] = set()
    for i, (name, mod, shape) in enumerate(order):
        if not isinstance(mod, nn.Conv2d):
            continue
        nxt = order[i + 1][1] if i + 1 < len(order) else None
        bn = isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == mod.out_channels
        # the ReLU belongs to the unit when it reads the BatchNorm's result (not a residual sum elsewhere)
        relu = bn and i + 2 < len(order) and isinstance(order[i + 2][1], nn.ReLU) and ptrs[i + 2][0] == ptrs[i + 1][1]
        used.update(range(i, i + 1 + bn + relu))
        sites.append(
            ConvSite(
                name,
                mod.in_channels,
                mod.out_channels,
                _pair(mod.kernel_size),
                _pair(mod.stride),
                _pair(mod.padding),
                _pair(mod.dilation),
                mod.groups,
                (shape[2], shape[3]),
                bn,
                relu,
                owner_in.get(name),
                owner_out.get(name),
            )
        )
    return sites + _op_sites(order, used, sites)


def _op_sites(
    order: list[tuple[str, nn.Module, tuple[int, ...]]], used: set[int], convs: list[ConvSite]
) -> list[ConvSite]:
    """Parameter-free ops outside the conv units (max pooling, the ReLU after a residual addition) whose
    channels are a prunable group's: their time follows that group's width too."""
    by_name = {c.name: c for c in convs}
    out = []
    last: dict[int, ConvSite] = {}  # channels -> the latest conv producing that many
    for i, (name, mod, shape) in enumerate(order):
        if name in by_name:
            last[by_name[name].cout] = by_name[name]
        if i in used or len(shape) != 4 or any(True for _ in mod.parameters()):
            continue
        src = last.get(shape[1])
        if src is None or src.out_group is None:
            continue  # fixed width: part of the fitted offset
        op = "addrelu" if isinstance(mod, nn.ReLU) else "op"
        out.append(
            ConvSite(
                f"{name}@{i}",
                shape[1],
                shape[1],
                (1, 1),
                (1, 1),
                (0, 0),
                (1, 1),
                1,
                (shape[2], shape[3]),
                False,
                False,
                None,
                src.out_group,
                op,
                name,
            )
        )
    return out


class _AddReLU(nn.Module):
    """A residual addition and its ReLU (the addition is functional, so no module of the model shows it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(x + x)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, tuple) else (int(v), int(v))


def width_choices(base: int, round_to: int, min_keep: float) -> list[int]:
    """Every width the budget projection can give a group of ``base`` channels (see budget.project)."""
    from autoprune.pruning.budget import Budget, _ceil_min

    lo = _ceil_min(base, Budget(0, min_keep=min_keep, round_to=round_to))
    step = round_to if base > round_to > 1 else 1
    return sorted(set(range(lo, base, step)) | {base})


def grid(choices: list[int], points: int) -> list[int]:
    """``points`` widths spread evenly over ``choices`` (by index), always with both ends."""
    if len(choices) <= points:
        return list(choices)
    idx = {round(i * (len(choices) - 1) / (points - 1)) for i in range(points)}
    return [choices[i] for i in sorted(idx)]


# -- the table ------------------------------------------------------------------------------------
@dataclass
class Kind:
    """One distinct convolution shape and its measured grid: ``ms[i][j]`` at ``cin[i]`` in, ``cout[j]`` out."""

    cin: list[int]
    cout: list[int]
    ms: list[list[float]] = field(default_factory=list)

    def at(self, cin: int, cout: int) -> float:
        i0, i1, u = _bracket(self.cin, cin)
        j0, j1, v = _bracket(self.cout, cout)
        m = self.ms
        return (1 - u) * (1 - v) * m[i0][j0] + u * (1 - v) * m[i1][j0] + (1 - u) * v * m[i0][j1] + u * v * m[i1][j1]


def _bracket(xs: list[int], x: int) -> tuple[int, int, float]:
    """Indices around ``x`` in sorted ``xs`` and the interpolation weight (linear extrapolation at the ends)."""
    if len(xs) == 1:
        return 0, 0, 0.0
    hi = next((i for i, v in enumerate(xs) if v >= x), len(xs) - 1)
    hi = max(1, hi)
    lo = hi - 1
    return lo, hi, (x - xs[lo]) / (xs[hi] - xs[lo])


@dataclass
class LatencyTable:
    """A measured table: its key, the layers (name -> kind index), the kinds' grids and the calibration."""

    key: TableKey
    layers: dict[str, dict[str, Any]]  # conv name -> {"kind": i, "cin": base in, "cout": base out}
    kinds: list[Kind]
    scale: float = 1.0
    offset_ms: float = 0.0
    calibration: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "key": asdict(self.key),
            "layers": self.layers,
            "kinds": [asdict(k) for k in self.kinds],
            "scale": self.scale,
            "offset_ms": self.offset_ms,
            "calibration": self.calibration,
            "seconds": self.seconds,
        }

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table; anything unreadable or malformed is one UserError naming the file."""
        p = Path(path)
        if not p.is_file():
            raise UserError(
                f"latency table {p} does not exist; make one with `autoprune latency profile ... --out {p}`"
            )
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(
                    f"format is {data.get('format') if isinstance(data, dict) else None!r}, not {FORMAT!r}"
                )
            table = cls(
                _parse_key(data["key"]),
                _parse_layers(data["layers"]),
                [_parse_kind(k) for k in data["kinds"]],
                _num(data["scale"], "scale"),
                _num(data["offset_ms"], "offset_ms"),
                list(data.get("calibration", [])),
                _num(data.get("seconds", 0.0), "seconds"),
            )
            table._check()
        # RecursionError: JSON nested thousands deep; OverflowError: a safety net beside _num's own check.
        # Both are a hostile or broken file, like the rest.
        except (
            ValueError,
            KeyError,
            TypeError,
            IndexError,
            AttributeError,
            UnicodeDecodeError,
            OverflowError,
            RecursionError,
        ) as exc:
            raise UserError(
                f"latency table {p} is corrupt ({type(exc).__name__}: {exc}); profile it again with "
                f"`autoprune latency profile`"
            ) from None
        return table

    def _check(self) -> None:
        for i, k in enumerate(self.kinds):
            if not k.cin or not k.cout or len(k.ms) != len(k.cin) or any(len(r) != len(k.cout) for r in k.ms):
                raise ValueError(f"kind {i}: grid and times disagree in size")
            if k.cin != sorted(set(k.cin)) or k.cout != sorted(set(k.cout)):
                raise ValueError(f"kind {i}: widths not increasing")
            if not all(math.isfinite(v) and v >= 0 for r in k.ms for v in r):
                raise ValueError(f"kind {i}: a time is negative or not finite")
        for name, layer in self.layers.items():
            if not 0 <= layer["kind"] < len(self.kinds):
                raise ValueError(f"layer {name} names kind {layer['kind']}")
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.offset_ms)):
            raise ValueError("calibration scale/offset not finite")


# Bounds a real table stays far inside: a value outside them is a corrupt file, not a big model.
MAX_WIDTH, MAX_SIDE, MAX_BATCH, MAX_GRID, MAX_LAYERS = 1 << 16, 1 << 14, 1 << 16, 1024, 10_000


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{what} is {v!r}, not an integer")
    if not lo <= v <= hi:
        raise ValueError(f"{what} is {v}, outside [{lo}, {hi}]")
    return v


def _num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{what} is {v!r}, not a number")
    try:
        return float(v)
    except OverflowError:  # an integer of hundreds of digits: no table holds one
        raise ValueError(f"{what} is an integer too large for a number") from None


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{what} is {v!r}, not a string")
    return v


def _parse_key(key: dict[str, Any]) -> TableKey:
    if set(key) - set(TableKey.__dataclass_fields__):
        raise KeyError(f"unknown key fields {sorted(set(key) - set(TableKey.__dataclass_fields__))}")
    size = key["input_size"]
    if not isinstance(size, list) or len(size) != 2:
        raise TypeError(f"key.input_size is {size!r}, not [height, width]")
    ort = key.get("onnxruntime")
    min_keep = _num(key["min_keep"], "key.min_keep")
    if not 0 < min_keep <= 1:
        raise ValueError(f"key.min_keep is {min_keep}, outside (0, 1]")
    return TableKey(
        _str(key["arch"], "key.arch"),
        _int(key["last_stride"], "key.last_stride", 1, 4),
        _str(key["pooling"], "key.pooling"),
        (_int(size[0], "key.input_size", 1, MAX_SIDE), _int(size[1], "key.input_size", 1, MAX_SIDE)),
        _int(key["batch"], "key.batch", 1, MAX_BATCH),
        _str(key["runtime"], "key.runtime"),
        _str(key["device"], "key.device"),
        _int(key["threads"], "key.threads", 1, 4096),
        _str(key["torch"], "key.torch"),
        None if ort is None else _str(ort, "key.onnxruntime"),
        _int(key["round_to"], "key.round_to", 1, MAX_WIDTH),
        min_keep,
        _str(key.get("clock", "wall"), "key.clock"),
    )


def _parse_layers(layers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if not isinstance(layers, dict) or len(layers) > MAX_LAYERS:
        raise TypeError(f"layers is not a mapping of at most {MAX_LAYERS} layers")
    return {
        _str(n, "a layer name"): {
            "kind": _int(v["kind"], f"layer {n} kind", 0, MAX_LAYERS),
            "cin": _int(v["cin"], f"layer {n} cin", 1, MAX_WIDTH),
            "cout": _int(v["cout"], f"layer {n} cout", 1, MAX_WIDTH),
        }
        for n, v in layers.items()
    }


def _parse_kind(k: dict[str, Any]) -> Kind:
    def widths(vs: Any, what: str) -> list[int]:
        if not isinstance(vs, list) or len(vs) > MAX_GRID:
            raise TypeError(f"{what} is not a list of at most {MAX_GRID} widths")
        return [_int(v, what, 1, MAX_WIDTH) for v in vs]

    if not isinstance(k["ms"], list) or not all(isinstance(r, list) for r in k["ms"]):
        raise TypeError("ms is not a list of rows")
    return Kind(widths(k["cin"], "cin"), widths(k["cout"], "cout"), [[_num(v, "a time") for v in r] for r in k["ms"]])


# -- measuring ------------------------------------------------------------------------------------
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def wall_measure(
    runtime: str = "torch",
    device: str = "cpu",
    threads: int | None = None,
    repeats: int = 7,
    warmup: int = 2,
    clock: str = "wall",
) -> Measure:
    """The real clock: ``repeats`` timed runs of a module (after ``warmup``) in the given runtime.

    ``clock="cpu"`` times the process's CPU time instead of wall time: on a machine shared with other jobs
    and one thread it measures what the model would take alone, where wall time measures the queue.
    """
    now = CLOCKS[clock]

    def measure(module: nn.Module, shape: tuple[int, ...]) -> list[float]:
        with _threads(threads):
            run = _runner(module, shape, runtime, device, threads)
            for _ in range(warmup):
                run()
            times = []
            for _ in range(repeats):
                t0 = now()
                run()
                times.append(now() - t0)
        return times

    return measure


class _threads:
    """Run with ``n`` intra-op threads, then restore (a search trains with its own thread count)."""

    def __init__(self, n: int | None) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.old = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.old)


def _runner(
    module: nn.Module, shape: tuple[int, ...], runtime: str, device: str, threads: int | None
) -> Callable[[], Any]:
    module = module.eval()
    if runtime == "onnxruntime":
        ort = _onnxruntime()
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # torch types f as a path, but the TorchScript exporter writes to any binary file object
            torch.onnx.export(module.cpu(), (torch.zeros(shape),), buf, input_names=["x"], dynamo=False)  # type: ignore[arg-type]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        feed = {"x": torch.randn(shape).numpy()}
        return lambda: sess.run(None, feed)
    dev = torch.device(device)
    module = module.to(dev)
    x = torch.randn(shape, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run() -> None:
        with torch.inference_mode():
            module(x)
        sync()

    return run


def median_ms(times: list[float]) -> float:
    return 1000.0 * statistics.median(times)


# -- building a table ------------------------------------------------------------------------------
def _unit(site: ConvSite, cin: int, cout: int, model: nn.Module) -> nn.Module:
    if site.op == "addrelu":
        return _AddReLU()
    if site.op == "op":
        return copy.deepcopy(model.get_submodule(site.module))
    g = site.groups if cin % site.groups == 0 and cout % site.groups == 0 else 1  # grouped convs keep their groups
    conv = nn.Conv2d(cin, cout, site.kernel, site.stride, site.padding, site.dilation, groups=g, bias=False)
    if not site.bn:
        return conv
    return (
        nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        if site.relu
        else nn.Sequential(conv, nn.BatchNorm2d(cout))
    )


def plan(
    sites: list[ConvSite], widths: dict[str, int], round_to: int, min_keep: float, points: int
) -> tuple[dict[str, dict[str, Any]], list[tuple[ConvSite, Kind]]]:
    """The layers -> kinds map and, per distinct kind, its grid of widths to measure."""
    layers: dict[str, dict[str, Any]] = {}
    kinds: list[tuple[ConvSite, Kind]] = []
    seen: dict[tuple, int] = {}
    for s in sites:
        k = s.shape_key()
        if k not in seen:
            cin = grid(width_choices(widths[s.in_group], round_to, min_keep), points) if s.in_group else [s.cin]
            cout = grid(width_choices(widths[s.out_group], round_to, min_keep), points) if s.out_group else [s.cout]
            seen[k] = len(kinds)
            kinds.append((s, Kind(cin, cout)))
        layers[s.name] = {"kind": seen[k], "cin": s.cin, "cout": s.cout}
    return layers, kinds


def profile(
    model: nn.Module,
    key: TableKey,
    measure: Measure,
    points: int = 6,
    progress: bool = True,
    calibration_keep: tuple[float, ...] = CALIBRATION_KEEP,
) -> LatencyTable:
    """Measure every layer kind of ``model`` on its grid, then fit the rest against whole pruned models."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    model = copy.deepcopy(model).cpu().eval()
    graph = PruningGraph(model, key.input_size)
    sites = conv_sites(graph)
    layers, kinds = plan(sites, graph.widths(), key.round_to, key.min_keep, points)
    total = sum(len(k.cin) * len(k.cout) for _, k in kinds) + 2 * len(calibration_keep)
    bar = tqdm(total=total, desc="latency profile", unit="pt", disable=not progress, leave=False)
    b = key.batch
    for site, kind in kinds:
        kind.ms = [
            [
                median_ms(measure(_unit(site, ci, co, model), (b, ci if site.op == "conv" else co, *site.in_hw)))
                for co in kind.cout
                if not bar.update(1)
            ]
            for ci in kind.cin
        ]
    for _, kind in kinds:
        kind.ms = monotone(kind.ms)
    table = LatencyTable(key, layers, [k for _, k in kinds])
    bound = LatencyModel(table, graph)
    points_ = []
    for keep, widths in calibration_policies(graph.widths(), key, calibration_keep):
        whole = skeleton(model, key.input_size, widths)
        measured = median_ms(measure(whole, (b, 3, *key.input_size)) + measure(whole, (b, 3, *key.input_size)))
        points_.append({"keep": keep, "layers_ms": bound.layers_ms(widths), "measured_ms": measured})
        bar.update(1)
    bar.close()
    table.scale, table.offset_ms = fit_calibration(points_)
    table.calibration = points_
    table.seconds = time.perf_counter() - start
    return table


def monotone(ms: list[list[float]]) -> list[list[float]]:
    """The grid made non-decreasing along both axes (running maximum): more channels never predict less
    time, so the projection's search over one common scale stays well posed despite timing noise."""
    out = [list(r) for r in ms]
    for i, row in enumerate(out):
        for j in range(len(row)):
            row[j] = max(row[j], row[j - 1] if j else row[j], out[i - 1][j] if i else row[j])
    return out


def fit_calibration(points: list[dict[str, float]]) -> tuple[float, float]:
    """``measured = scale * layers + offset`` by Theil-Sen (median of pairwise slopes): one run slowed by
    another job on the machine does not bend the fit. A slope outside [0.5, 2] keeps scale 1."""
    xs = [p["layers_ms"] for p in points]
    ys = [p["measured_ms"] for p in points]
    if not points:
        return 1.0, 0.0
    slopes = [
        (ys[j] - ys[i]) / (xs[j] - xs[i])
        for i in range(len(xs))
        for j in range(i + 1, len(xs))
        if abs(xs[j] - xs[i]) > 1e-9 * max(xs)
    ]
    scale = statistics.median(slopes) if slopes else 1.0
    if not 0.5 <= scale <= 2.0:
        scale = 1.0
    return scale, statistics.median(y - scale * x for x, y in zip(xs, ys))


def calibration_policies(
    widths: dict[str, int], key: TableKey, keeps: tuple[float, ...]
) -> list[tuple[float, dict[str, int]]]:
    """Uniform policies at ``keeps``, then as many random ones (seeded): the fit must not see only uniform shapes."""
    import random

    rng = random.Random(0)
    out = [(k, uniform_widths(widths, k, key.round_to, key.min_keep)) for k in keeps]
    for _ in keeps:
        per = {
            n: uniform_widths({n: b}, rng.uniform(key.min_keep, 1.0), key.round_to, key.min_keep)[n]
            for n, b in widths.items()
        }
        out.append((-1.0, per))
    return out


def uniform_widths(widths: dict[str, int], keep: float, round_to: int, min_keep: float) -> dict[str, int]:
    """Each group at the allowed width nearest to ``keep`` of its channels."""
    out = {}
    for name, base in widths.items():
        choices = width_choices(base, round_to, min_keep)
        out[name] = min(choices, key=lambda c: (abs(c - keep * base), c))
    return out


def skeleton(model: nn.Module, input_size: tuple[int, int], widths: dict[str, int]) -> nn.Module:
    """A copy of ``model`` cut to ``widths`` (which channels go does not matter for timing)."""
    m = copy.deepcopy(model).cpu().eval()
    graph = PruningGraph(m, input_size)
    for name, keep in widths.items():
        current = graph.groups[name].channels
        if keep < current:
            graph.prune(name, list(range(keep, current)))
    return m


# -- using a table -------------------------------------------------------------------------------
class LatencyModel:
    """A table bound to a model's prunable groups: predicted milliseconds per image for any widths."""

    def __init__(self, table: LatencyTable, graph: PruningGraph) -> None:
        self.table = table
        self.sites = conv_sites(graph)
        self.base_widths = graph.widths()
        names = {s.name for s in self.sites}
        if names != set(table.layers) or any(
            (table.layers[s.name]["cin"], table.layers[s.name]["cout"]) != (s.cin, s.cout) for s in self.sites
        ):
            raise UserError(
                f"the latency table was profiled for another architecture ({table.key.arch}, "
                f"{len(table.layers)} convolutions) than this model ({len(self.sites)}); "
                f"profile this one with `autoprune latency profile`"
            )
        self._terms = [(table.kinds[table.layers[s.name]["kind"]], s) for s in self.sites]

    def layers_ms(self, widths: dict[str, int]) -> float:
        """Sum of the table's layer times for the whole batch (uncalibrated)."""
        total = 0.0
        for kind, s in self._terms:
            cin = widths[s.in_group] if s.in_group else s.cin
            cout = widths[s.out_group] if s.out_group else s.cout
            total += kind.at(cin, cout)
        return total

    def predict_ms(self, widths: dict[str, int]) -> float:
        """Predicted milliseconds per image at the table's batch size."""
        t = self.table
        return (t.scale * self.layers_ms(widths) + t.offset_ms) / t.key.batch


def check_table(table: LatencyTable, expected: TableKey, source: str) -> None:
    """Refuse a table measured for another architecture, input, batch or width rounding (one line each)."""
    k = table.key
    for attr, what in (
        ("arch", "architecture"),
        ("last_stride", "last stride"),
        ("input_size", "input size"),
        ("batch", "batch size"),
    ):
        have, want = getattr(k, attr), getattr(expected, attr)
        if have != want:
            hint = {"batch": "budget.latency_batch"}.get(attr, "model." + attr)
            raise UserError(
                f"latency table {source} was profiled for {what} {_fmt(have)}, but this search uses "
                f"{_fmt(want)} ({hint}); profile it again with matching settings"
            )
    if k.min_keep > expected.min_keep + 1e-9 or expected.round_to % k.round_to:
        raise UserError(
            f"latency table {source} covers widths from budget.min_keep={k.min_keep} in steps of "
            f"{k.round_to}, but the search uses min_keep={expected.min_keep}, round_to="
            f"{expected.round_to}; profile it with --min-keep/--round-to matching the budget"
        )


def _fmt(v: Any) -> str:
    return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)


def table_device(key: TableKey) -> str:
    """The torch device kind a table was measured on: ``cuda`` or ``cpu``."""
    return "cuda" if key.device.startswith("cuda") else "cpu"


def same_device(key: TableKey) -> bool:
    """Whether this machine is (a device of the same name as) the one the table was measured on, with its
    runtime installed, so models can be timed here. Where the search trains does not matter: a CPU table
    is checked against this machine's CPU even when training runs on a GPU."""
    if table_device(key) == "cuda" and not torch.cuda.is_available():
        return False
    if key.device != device_name(table_device(key)):
        return False
    if key.runtime == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401 (is it installed?)
        except ImportError:
            return False
    return True


def measure_model(model: nn.Module, key: TableKey, measure: Measure) -> dict[str, float]:
    """Median and inter-quartile spread of one model's end-to-end time, milliseconds per image."""
    times = sorted(1000.0 * t / key.batch for t in measure(model, (key.batch, 3, *key.input_size)))
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "q1_ms": q[0], "q3_ms": q[2], "runs": len(times)}


# -- in a search -----------------------------------------------------------------------------------
class EndToEnd:
    """Times whole pruned models on this machine (the table's device), so a projection can be tightened."""

    def __init__(self, latency: LatencyModel, baseline: nn.Module, measure: Measure, rounds: int = 3) -> None:
        self.latency, self.baseline, self.measure, self.rounds = latency, baseline, measure, rounds
        self.key = latency.table.key
        self._memo: dict[tuple, dict[str, float]] = {}

    def time_widths(self, widths: dict[str, int], again: bool = False) -> dict[str, float]:
        """Median and spread of the model cut to ``widths`` (memoised: timing is the slow part). ``again``
        times it once more and keeps the faster of the two (the quieter moment of the machine)."""
        k = tuple(sorted(widths.items()))
        if k not in self._memo or again:
            t = measure_model(skeleton(self.baseline, self.key.input_size, widths), self.key, self.measure)
            if k not in self._memo or t["q3_ms"] < self._memo[k]["q3_ms"]:
                self._memo[k] = t
        return self._memo[k]

    def tighten(
        self, counts: dict[str, int], reproject: Callable[[float], dict[str, int]], limit_ms: float
    ) -> dict[str, int]:
        """Counts whose measured upper quartile meets ``limit_ms``: while over, project again under the
        predicted limit scaled down by the overshoot. Gives up (keeping the last counts) when nothing smaller
        is allowed. The upper quartile, not the median: a model accepted at a median just under the limit is
        over it in about half of later timings, so the run-to-run spread is kept as a margin."""
        target = limit_ms
        for _ in range(self.rounds):
            got = self.time_widths(counts)["q3_ms"]
            if got > limit_ms:  # confirmed before acting: a burst of other work is not the model's time
                got = self.time_widths(counts, again=True)["q3_ms"]
            if got <= limit_ms:
                break
            target *= limit_ms / got
            try:
                counts = reproject(target)
            except UserError:
                break
        return counts


def expected_key(cfg: dict[str, Any], device: str = "cpu") -> TableKey:
    """The key a table must have for this search (runtime torch, this machine's threads)."""
    m, b = cfg["model"], cfg["budget"]
    return make_key(
        m["arch"],
        tuple(m["input_size"]),
        b["latency_batch"],
        "torch",
        device,
        None,
        m["last_stride"],
        m["pooling"],
        b["round_to"],
        b["min_keep"],
    )


def load_or_profile(
    cfg: dict[str, Any],
    model: nn.Module,
    device: str = "cpu",
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> LatencyTable:
    """``budget.latency_table`` (checked against this search), or this machine's table from the cache
    (``data.root/latency/``), profiled now if it is not there yet."""
    want = expected_key(cfg, device)
    path = cfg["budget"]["latency_table"]
    if path is not None:
        table = LatencyTable.load(path)
        check_table(table, want, str(path))
        return table
    cache = Path(cfg["data"]["root"]) / "latency" / f"{want.arch}-{want.digest()}.json"
    if cache.is_file():
        return LatencyTable.load(cache)
    log(
        f"latency: profiling {want.arch} at {_fmt(want.input_size)}, batch {want.batch}, on this machine "
        f"({want.device}, {want.threads} threads); cached in {cache}"
    )
    table = profile(model, want, wall_measure(want.runtime, device, want.threads, clock=want.clock), progress=progress)
    table.save(cache)
    return table


def latency_budget(
    cfg: dict[str, Any],
    graph: PruningGraph,
    budget: Any,
    device: str = "cpu",
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Any, EndToEnd | None]:
    """``budget`` with the latency limit attached, and an end-to-end checker when this machine is the
    table's device (None elsewhere: the table is then trusted as measured)."""
    from dataclasses import replace

    from autoprune.config import DEFAULT_LATENCY_MARGIN

    table = load_or_profile(cfg, graph.model, device, progress, log)
    latency = LatencyModel(table, graph)
    margin = cfg["budget"].get("latency_margin")
    margin = DEFAULT_LATENCY_MARGIN if margin is None else float(margin)
    limit = float(cfg["budget"]["latency_ms"]) * (1 - margin)  # projection and end-to-end check aim here
    budget = replace(budget, latency_ms=limit, latency_margin=margin, latency=latency)
    checker = None
    if same_device(table.key):
        measure = wall_measure(
            table.key.runtime, table_device(table.key), table.key.threads, repeats=20, clock=table.key.clock
        )
        checker = EndToEnd(latency, graph.model, measure)
    return budget, checker


def trial_latency_ms(latency: LatencyModel, counts: dict[str, int]) -> float | None:
    """A trial's predicted milliseconds per image (trials.csv, report.json); None for a trial without counts."""
    if not counts:
        return None
    return round(latency.predict_ms({**latency.base_widths, **counts}), 4)


def latency_entry(
    budget: Any, checker: EndToEnd | None, model: nn.Module, widths: dict[str, int], runs: int = 50
) -> dict[str, Any]:
    """A model's latency for report.json: the median of ``runs`` timed runs on this machine when it is the
    table's device (with the inter-quartile spread), else the table's prediction."""
    predicted = budget.latency.predict_ms(widths)
    out: dict[str, Any] = {
        "latency_ms": round(predicted, 4),
        "latency_spread_ms": None,
        "latency_predicted_ms": round(predicted, 4),
        "latency_measured": False,
    }
    if checker is not None:
        key = checker.key
        t = measure_model(
            model, key, wall_measure(key.runtime, table_device(key), key.threads, repeats=runs, clock=key.clock)
        )
        out.update(
            latency_ms=round(t["median_ms"], 4),
            latency_spread_ms=[round(t["q1_ms"], 4), round(t["q3_ms"], 4)],
            latency_measured=True,
            latency_runs=runs,
        )
    return out


def budget_entry(budget: Any, cfg: dict[str, Any], checker: EndToEnd | None) -> dict[str, Any]:
    """The latency side of report.json's ``budget``; ``latency_timed_here`` says whether this machine is the
    table's device (policies tightened and models timed end to end here) or the latencies are the table's."""
    k = budget.latency.table.key
    return {
        "latency_ms": budget.user_latency_ms,
        "latency_margin": budget.latency_margin,
        "latency_target_ms": round(budget.latency_ms, 4),
        "latency_batch": k.batch,
        "latency_unit": "ms per image",
        "latency_device": k.device,
        "latency_threads": k.threads,
        "latency_runtime": k.runtime,
        "latency_table": cfg["budget"]["latency_table"] or "profiled on this machine",
        "latency_timed_here": checker is not None,
    }
