"""The station config's optional ``line:`` section: triggers, PLC, reject, recipes, MQTT, page.

Additive: a station without ``line`` runs exactly as before. Validated with the rest of the
station config (unknown keys are errors). The schema is documented in docs/line-integration.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TRIGGER_MODES = ("free-run", "gpio", "network", "any")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipeThresholds(_Strict):
    image: float | None = None
    pixel: float | None = None
    min_area: int | None = Field(None, ge=0)


class Recipe(_Strict):
    id: int = Field(ge=1, le=65535, description="the number a PLC writes to select it")
    name: str = Field(min_length=1, max_length=64)
    bundle: Path
    thresholds: RecipeThresholds = Field(default_factory=RecipeThresholds)
    roi: list[int] | None = Field(None, min_length=4, max_length=4)
    trigger: Literal["free-run", "gpio", "network", "any"] = Field(
        "any", description="which triggers inspect a part: free-run (every frame), gpio, network, or any "
        "of gpio/network; the operator page's button works in every mode but free-run")


class LineCamera(_Strict):
    source: str = Field(description="what the line service grabs a frame from on each trigger "
                        "(as `lineside camera SOURCE`)")
    name: str = "line0"
    encoding: Literal["raw", "jpeg", "png"] = "raw"
    free_run_fps: float | None = Field(None, gt=0, le=1000, description="free-run: frames per second")
    client_key: Path | None = Field(None, description="Curve key pair, when the station uses Curve")
    server_key: Path | None = None


class GpioLine(_Strict):
    pin: int = Field(ge=0)
    active_high: bool = True


class TriggerInput(GpioLine):
    debounce_ms: float = Field(5.0, ge=0, le=1000, description="a level must hold this long to count")


class EncoderConfig(_Strict):
    source: Literal["gpio", "plc"] = Field(description="gpio: count rising edges on `pin`; plc: the PLC "
                                           "writes the count into the encoder registers")
    pin: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _pin(self):
        if self.source == "gpio" and self.pin is None:
            raise ValueError("an encoder with source gpio needs `pin`")
        return self


class RejectConfig(_Strict):
    output: GpioLine | None = Field(None, description="the ejector's line (None: simulated only)")
    delay_ms: float | None = Field(None, ge=0, le=600_000)
    encoder_counts: int | None = Field(None, ge=1)
    encoder: EncoderConfig | None = None
    pulse_ms: float = Field(50.0, gt=0, le=10_000)
    reject: list[Literal["NG", "ERROR", "DROPPED"]] = Field(
        default_factory=lambda: ["NG", "ERROR", "DROPPED"],
        description="verdicts that reject; anything but OK rejects by default (fail-safe)")

    @model_validator(mode="after")
    def _one_distance(self):
        if (self.delay_ms is None) == (self.encoder_counts is None):
            raise ValueError("give exactly one of delay_ms or encoder_counts")
        if self.encoder_counts is not None and self.encoder is None:
            raise ValueError("encoder_counts needs an `encoder` (gpio pin or plc register)")
        return self


class ModbusConfig(_Strict):
    host: str = Field("127.0.0.1", description="interface to listen on (default loopback only; the PLC's cell "
                      "network interface address to open it, docs/security.md)")
    port: int = Field(502, ge=1, le=65535)
    allow: list[str] = Field(default_factory=list, description="client addresses or networks (CIDR) that may "
                             "connect; others are refused. Empty: any client that can reach `host`")

    @field_validator("allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is no IP address or network (e.g. 10.0.5.20 or 10.0.5.0/24)") from None
        return value


class OpcUaSecurity(_Strict):
    certificate: Path = Field(description="the server's certificate (PEM or DER; `lineside keys tls --uri ...`)")
    private_key: Path = Field(description="its private key (PEM, mode 0600)")
    modes: list[Literal["Sign", "SignAndEncrypt"]] = Field(
        default_factory=lambda: ["SignAndEncrypt"], min_length=1,
        description="Basic256Sha256 message security modes offered")
    trusted_clients: Path | None = Field(None, description="folder of client certificates (PEM/DER) allowed to "
                                         "connect; without it any client certificate is accepted")
    anonymous: Literal["off", "read-only"] = Field("off", description="clients without a user name: refused, or "
                                                   "may browse and read but never call a method")


class OpcUaConfig(_Strict):
    endpoint: str = Field("opc.tcp://127.0.0.1:4840/lineside", pattern=r"^opc\.tcp://")
    security: OpcUaSecurity | None = Field(None, description="certificates, users and roles "
                                           "(docs/security.md); without it: no security, anyone who "
                                           "reaches the endpoint may call every method")


class MqttConfig(_Strict):
    host: str
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str | None = Field(None, description="default: lineside/<station>")
    client_id: str | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(2.0, gt=0, description="longest wait between reconnect attempts: the line is back this soon after the broker")
    inflight: int = Field(64, ge=1, le=65535, description="QoS 1 messages on the wire before their PUBACK (paho's in-flight window)")
    username: str | None = None
    password: str | None = None


class OperatorPageConfig(_Strict):
    host: str = Field("127.0.0.1", description="interface to listen on (default loopback only)")
    port: int = Field(8080, ge=1, le=65535)
    tls_cert: Path | None = Field(None, description="certificate (PEM) for HTTPS; `lineside keys tls` makes a "
                                  "self-signed one for commissioning")
    tls_key: Path | None = Field(None, description="its private key (PEM)")

    @model_validator(mode="before")
    @classmethod
    def _no_shared_token(cls, data):
        if isinstance(data, dict) and "token_file" in data:
            raise ValueError("token_file (one shared operator token) is gone: add people with `lineside users "
                             "add CONFIG NAME --role operator` and machines with `--token` (security.users, "
                             "docs/security.md), then delete token_file")
        return data

    @model_validator(mode="after")
    def _tls_pair(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        return self


class DriftConfig(_Strict):
    window: int = Field(200, ge=10, le=100_000, description="recent parts the checks look at")
    ng_rate: float = Field(0.2, gt=0, le=1, description="warn when the NG share of the window exceeds this")
    score_ratio: float = Field(0.8, gt=0, description="warn when the mean score exceeds this x threshold")


class LineConfig(_Strict):
    camera: LineCamera | None = Field(None, description="the camera the line service triggers")
    recipes: list[Recipe] = Field(default_factory=list)
    recipe: int | None = Field(None, description="recipe id active at start (default: the first)")
    trusted_keys: Path | None = Field(None, description="folder of trusted *.sign.pub keys: recipes then "
                                      "need a bundle signed by one of them")
    trigger_input: TriggerInput | None = None
    gpio_backend: Literal["jetson", "sim"] = "jetson"
    max_in_flight: int = Field(4, ge=1, le=256, description="parts triggered and not yet decided, at most")
    result_buffer: int = Field(8, ge=1, le=64, description="unacknowledged results the PLC can see")
    reject: RejectConfig | None = None
    modbus: ModbusConfig | None = None
    opcua: OpcUaConfig | None = None
    mqtt: MqttConfig | None = None
    operator_page: OperatorPageConfig | None = None
    drift: DriftConfig = Field(default_factory=DriftConfig)

    @model_validator(mode="after")
    def _recipes(self):
        ids = [r.id for r in self.recipes]
        if len(ids) != len(set(ids)):
            raise ValueError(f"recipe ids must be distinct, got {ids}")
        if self.recipe is not None and self.recipe not in ids:
            raise ValueError(f"recipe {self.recipe} is not one of the recipes {ids}")
        return self

    def resolve(self, fix) -> LineConfig:
        """Make relative paths absolute with ``fix`` (the station config's resolver)."""
        for r in self.recipes:
            r.bundle = fix(r.bundle)
        if self.trusted_keys:
            self.trusted_keys = fix(self.trusted_keys)
        for holder, keys in ((self.operator_page, ("tls_cert", "tls_key")),
                             (self.opcua and self.opcua.security, ("certificate", "private_key", "trusted_clients"))):
            for key in keys if holder else ():
                if getattr(holder, key) is not None:
                    setattr(holder, key, fix(getattr(holder, key)))
        if self.camera:
            local = fix(Path(self.camera.source))  # a folder or video beside the config; "0", URLs and
            if local.exists():                      # pipelines are no paths there and stay as they are
                self.camera.source = str(local)
            for key in ("client_key", "server_key"):
                if getattr(self.camera, key):
                    setattr(self.camera, key, fix(getattr(self.camera, key)))
        return self
