"""The station config: one YAML (or TOML) file that says everything `lineside serve` does.

Validated at load with pydantic; unknown keys are errors (a typo must not silently fall
back to a default on a production line). Relative paths are relative to the file.
The schema, with an example, is in docs/station-config.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .backends import BACKENDS
from .errors import LinesideError
from .line.config import LineConfig
from .wire import HARD_MAX_PAYLOAD, MAX_SIDE, NAME_PATTERN, Limits


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sockets(_Strict):
    frames: str = Field("tcp://127.0.0.1:5555", description="PULL: cameras connect and PUSH frames here")
    verdicts: str = Field("tcp://127.0.0.1:5556", description="PUB: verdict.<station> and alert.<station>")
    control: str = Field("tcp://127.0.0.1:5557", description="REP: lineside ctl")


class QueueConfig(_Strict):
    capacity: int = Field(8, ge=1, le=4096, description="frames waiting for the model, at most")
    policy: Literal["drop-oldest", "drop-newest"] = "drop-oldest"
    socket_hwm: int = Field(64, ge=1, le=100_000, description=(
        "frames ZeroMQ holds on the frames socket until the receiver reads them (memory: up to "
        "socket_hwm x limits.max_payload_bytes); too small, and libzmq discards what a camera had in "
        "flight when it disconnects while this buffer is full"))


class BatchConfig(_Strict):
    """Dynamic batching, as Triton's dynamic batcher: a worker takes what is queued, up to
    ``max_frames``, and waits at most ``max_wait_ms`` for a partial batch to fill."""

    max_frames: int = Field(1, ge=1, le=64, description="frames per backend call (capped by the bundle)")
    max_wait_ms: float = Field(2.0, ge=0, le=1000, description="how long a partial batch waits for more")


class LimitsConfig(_Strict):
    max_payload_bytes: int = Field(16 << 20, ge=1024, le=HARD_MAX_PAYLOAD)
    max_side: int = Field(4096, ge=8, le=MAX_SIDE)

    def limits(self, shm: bool = False) -> Limits:
        return Limits(self.max_payload_bytes, self.max_side, shm)


class RetainConfig(_Strict):
    """How long verdicts stay in the journal, and how much disk it may take (docs/station-config.md)."""

    days: float | None = Field(30, gt=0, description="OK, ERROR and DROPPED verdicts older than this are deleted "
                               "(null: kept until the disk budget needs their space)")
    ng_days: float | None = Field(365, gt=0, description="NG and reviewed verdicts (confirmed set) are kept this "
                                  "long (null: until the disk budget needs their space)")
    max_mb: float | None = Field(2048, ge=2, description="disk budget of the journal file and its WAL, in MiB; "
                                 "over it the oldest OK verdicts go first, then older NG/reviewed ones "
                                 "(null: no budget)")
    warn_percent: float = Field(80, gt=0, le=100, description="health warns when the journal reaches this share "
                                "of max_mb")
    interval_s: float = Field(10, gt=0, le=3600, description="how often the retention job runs")
    batch_rows: int = Field(500, ge=10, le=10_000, description="verdicts deleted per transaction: small, so the "
                            "line's writes never wait long")

    @model_validator(mode="after")
    def _ng_kept_longer(self):
        if self.days is not None and self.ng_days is not None and self.ng_days < self.days:
            raise ValueError(f"ng_days ({self.ng_days:g}) must be at least days ({self.days:g}): NG and reviewed "
                             "verdicts are the ones kept longer")
        return self


class JournalConfig(_Strict):
    path: Path = Path("journal.sqlite")
    synchronous: Literal["normal", "full"] = Field(
        "normal", description="normal: survives a process crash; full: also a power cut, slower")
    retain: RetainConfig = Field(default_factory=RetainConfig, description="retention by age and disk budget")
    backlog: int = Field(10_000, ge=0, le=1_000_000, description=(
        "verdicts kept in memory while the journal cannot be written (disk full), written when it can "
        "again; beyond it the oldest are published only"))


class CurveConfig(_Strict):
    server_secret_key: Path = Field(description="the server's key pair, the *.key_secret file of `lineside keys`")
    authorized_clients: Path = Field(description="folder of the clients' public *.key files")


class SecurityConfig(_Strict):
    users: Path = Field(description="the users file on the device (`lineside users add`; mode 0600): who may "
                        "log in to the operator page and OPC UA, with which role")
    session_secret: Path | None = Field(None, description="the key that signs page sessions (made on first "
                                        "start, mode 0600; default: beside the users file)")
    session_hours: float = Field(8.0, gt=0, le=24 * 30, description="a page login lasts this long")

    def secret_path(self) -> Path:
        return self.session_secret or self.users.with_name(self.users.name + ".session-secret")


class ThresholdsConfig(_Strict):
    image: float | None = None
    pixel: float | None = None
    min_area: int | None = Field(None, ge=0)


class WebhookConfig(_Strict):
    url: str = Field(pattern=r"^https?://")
    timeout_s: float = Field(2.0, gt=0, le=60)
    headers: dict[str, str] = Field(default_factory=dict)


class GpioConfig(_Strict):
    pin: int = Field(ge=0)
    numbering: Literal["BOARD", "BCM"] = "BOARD"
    pulse_ms: float = Field(50.0, gt=0, le=10_000)
    active_high: bool = True
    max_age_ms: float = Field(1000.0, gt=0, description="a pulse later than this would hit the wrong part: skip it")


class DiskConfig(_Strict):
    dir: Path
    keep: int = Field(1000, ge=1, description="newest NG records kept; older ones are deleted")


class AlertsConfig(_Strict):
    zmq: bool = Field(True, description="publish NG verdicts on alert.<station>")
    webhook: WebhookConfig | None = None
    gpio: GpioConfig | None = None
    disk: DiskConfig | None = None
    retry_initial_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)


class TilesConfig(_Strict):
    """What the station expects of its bundle's tiling; the bundle's manifest decides, a mismatch is refused."""

    size: int = Field(ge=8, description="tile size in source pixels (of the ROI at full resolution)")
    overlap: int = Field(0, ge=0, description="least overlap of neighbouring tiles, in source pixels")


class CameraConfig(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    source: str = ""
    fps: float | None = Field(None, gt=0)
    encoding: Literal["raw", "jpeg", "png"] = "jpeg"


class StationConfig(_Strict):
    station: str = Field(pattern=NAME_PATTERN)
    bundle: Path
    backend: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto", description="auto: the precision of the engine built for this bundle on this device, else fp32")
    threads: int | None = Field(None, ge=1, description="CPU threads per backend (default: all cores / workers)")
    workers: int = Field(1, ge=1, le=16, description=(
        "scoring threads, each with its own backend, taking batches from the one queue; verdicts "
        "of different workers may leave out of arrival order (ids and frame ids tell them apart)"))
    cuda_graph: bool = Field(False, description=(
        "tensorrt backend: capture each batch size into a CUDA graph and replay it (less launch overhead "
        "per frame); needs cuda-python. Other backends run without graphs"))
    roi: list[int] | None = Field(None, min_length=4, max_length=4, description="x, y, width, height")
    tiles: TilesConfig | None = Field(None, description=(
        "the tiling this station runs (docs/station-config.md): it must match the bundle's manifest, which "
        "decides it; omit to follow the bundle"))
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig, description="override the bundle's")
    sockets: Sockets = Field(default_factory=Sockets)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    shm: bool = Field(False, description=(
        "accept raw frames through shared memory from cameras on this host (`lineside camera --shm-slots N`): "
        "the message names a slot of the camera's /dev/shm/lineside-* segment, which the server maps "
        "read-only (same user, sizes within `limits`). Off: such frames get an ERROR verdict"))
    journal: JournalConfig = Field(default_factory=JournalConfig)
    curve: CurveConfig | None = None
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    metrics_port: int | None = Field(None, ge=1, le=65535, description="serve Prometheus metrics on this port")
    metrics_host: str = Field("127.0.0.1", description="interface the metrics listen on (default loopback only)")
    security: SecurityConfig | None = Field(None, description="users, roles and sessions (docs/security.md)")
    secrets_file: Path | None = Field(None, description="YAML `name: value` on the device (mode 0600) that "
                                      "`!secret name` references read")
    cameras: list[CameraConfig] = Field(default_factory=list, description="if given, only these cameras are accepted")
    line: LineConfig | None = Field(None, description="line integration: triggers, PLC, reject, recipes, MQTT, "
                                    "operator page (docs/line-integration.md)")
    _source: Path | None = PrivateAttr(None)  # the file it was loaded from: `ctl reload` reads it again

    @property
    def source(self) -> Path | None:
        return self._source

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}: choose one of {', '.join(BACKENDS)}")
        return value

    @model_validator(mode="after")
    def _cuda_graph_needs_tensorrt(self):
        if self.cuda_graph and self.backend.startswith("ort-"):
            raise ValueError(f"cuda_graph: true applies to the tensorrt backend only, and backend is {self.backend}: "
                             "set backend: tensorrt (or auto) or remove cuda_graph")
        return self

    @model_validator(mode="after")
    def _distinct_cameras(self):
        names = [c.name for c in self.cameras]
        if len(names) != len(set(names)):
            raise ValueError(f"camera names must be distinct, got {names}")
        return self

    def resolve(self, base: Path) -> "StationConfig":
        """Make the file's relative paths absolute against ``base`` (the config's folder)."""
        def fix(p: Path) -> Path:
            return p if p.is_absolute() else (base / p).resolve()

        cfg = self.model_copy(deep=True)
        cfg.bundle = fix(cfg.bundle)
        cfg.journal.path = fix(cfg.journal.path)
        if cfg.curve:
            cfg.curve.server_secret_key = fix(cfg.curve.server_secret_key)
            cfg.curve.authorized_clients = fix(cfg.curve.authorized_clients)
        if cfg.alerts.disk:
            cfg.alerts.disk.dir = fix(cfg.alerts.disk.dir)
        if cfg.security:
            cfg.security.users = fix(cfg.security.users)
            if cfg.security.session_secret:
                cfg.security.session_secret = fix(cfg.security.session_secret)
        if cfg.secrets_file:
            cfg.secrets_file = fix(cfg.secrets_file)
        if cfg.line:
            cfg.line.resolve(fix)
        return cfg


def load_station(path: str | Path, resolve_secrets: bool = True) -> StationConfig:
    """Load and validate a station config; ``${ENV}`` and ``!secret`` references are resolved here,
    on the device. ``resolve_secrets=False`` (a host packing a bundle) checks everything else."""
    from . import secret_refs

    path = Path(path)
    data = read_station_data(path)
    if resolve_secrets:
        secrets_file = data.get("secrets_file")
        if isinstance(secrets_file, str) and not Path(secrets_file).is_absolute():
            secrets_file = path.parent.resolve() / secrets_file
        data = secret_refs.resolve(data, path, Path(secrets_file) if isinstance(secrets_file, (str, Path)) else None)
    else:
        data = secret_refs.placeholders(data)
    try:
        cfg = StationConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise LinesideError(f"station config {path} is invalid:\n" + "\n".join(lines)
                            + "\nfix those keys (schema: docs/station-config.md)") from None
    cfg = cfg.resolve(path.parent.resolve())
    cfg._source = path.absolute()  # `ctl reload` reads it again
    return cfg


def read_station_data(path: Path) -> dict:
    """The config file as data, with secret references still unresolved (SecretRef / "${NAME}")."""
    from . import secret_refs

    if not path.is_file():
        raise LinesideError(f"station config {path} does not exist: write one (see docs/station-config.md)")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            from .tomlread import loads

            data = secret_refs.from_toml(loads(text))
        else:
            data = secret_refs.load_yaml(text)
    except Exception as exc:  # yaml and tomllib raise their own parse errors
        raise LinesideError(f"station config {path} cannot be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise LinesideError(f"station config {path} must be a mapping of settings, got {type(data).__name__}")
    return data
