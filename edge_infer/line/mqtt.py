"""MQTT: verdicts, alerts and state to a broker (paho-mqtt), none lost while the broker is away.

Topics under ``topic_prefix`` (default ``lineside/<station>``):

- ``availability``: ``online`` (retained) once connected; the broker publishes the last will
  ``offline`` (retained) if this service vanishes;
- ``verdict``: every verdict, QoS 1, JSON with the journal ``id`` and the ``inspection`` id;
- ``alert``: NG verdicts, QoS 1;
- ``state``: ready, recipe, error code and counters, retained, when they change.

Delivery reads the journal, not memory: a cursor (table ``line_cursors``) holds the last
verdict the broker acknowledged (PUBACK). While the broker is down nothing advances; when it
returns, everything after the cursor is sent in order. At least once: around a disconnect a
verdict can arrive twice — consumers deduplicate by ``id``. paho reconnects with exponential
backoff between ``reconnect_min_s`` and ``reconnect_max_s``.
"""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt

from ..logs import log_event

BATCH = 64
PUBACK_WAIT_S = 5.0


class MqttChannel:
    def __init__(self, service, cfg):
        self.service, self.cfg, self.journal = service, cfg, service.journal
        self.prefix = (cfg.topic_prefix or f"lineside/{service.station}").rstrip("/")
        self.connected = threading.Event()
        self.wake, self.stop = threading.Event(), threading.Event()
        self.cursor = self.journal.cursor("mqtt")
        if self.cursor is None:  # first start: from now on, not the journal's whole history
            self.cursor = self.journal.last_verdict_id()
            self.journal.set_cursor("mqtt", self.cursor)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=cfg.client_id or f"lineside-{service.station}", clean_session=True)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password)
        client.will_set(f"{self.prefix}/availability", "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=max(1, round(cfg.reconnect_min_s)), max_delay=round(cfg.reconnect_max_s))
        client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
        self.client = client
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        client.loop_start()  # paho's thread: network I/O and reconnects with backoff
        self.thread = threading.Thread(target=self._run, name="line-mqtt", daemon=True)
        self.thread.start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log_event("mqtt_refused", reason=str(reason_code))
            return
        client.publish(f"{self.prefix}/availability", "online", qos=1, retain=True)
        self.connected.set()
        self.wake.set()
        log_event("mqtt_connected", host=self.cfg.host, port=self.cfg.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        log_event("mqtt_disconnected", reason=str(reason_code))

    # ---- the journal → broker loop ----------------------------------------------------------
    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._deliver()
            except Exception as exc:  # noqa: BLE001  e.g. a locked journal: retry, never stop delivering
                log_event("mqtt_delivery_failed", error=repr(exc))
                self.stop.wait(1.0)

    def _deliver(self) -> None:
        last_state = None
        while not self.stop.is_set():
            self._backlog_metric()
            if not self.connected.wait(0.2):
                continue
            state = self._state()
            if state != last_state and self._send(f"{self.prefix}/state", state, retain=True):
                last_state = state
            rows = self.journal.verdicts_after(self.cursor, BATCH)
            if not rows:
                self.wake.wait(0.2)
                self.wake.clear()
                continue
            for row in rows:
                if not self._send_verdict(row):
                    break  # the broker went away: resume from the cursor when it is back
                self.cursor = row["id"]
                self.journal.set_cursor("mqtt", self.cursor)

    def _send_verdict(self, row: dict) -> bool:
        tags = row["detail"].get("tags") or {}
        payload = {"id": row["id"], "station": row["station"], "inspection": _int(tags.get("inspection")),
                   "recipe": _int(tags.get("recipe")), "status": row["status"], "score": row["score"],
                   "threshold": row["threshold"], "camera": row["camera"], "frame_id": row["frame_id"],
                   "decided_at": row["decided_at"], "reason": row["reason"]}
        if not self._send(f"{self.prefix}/verdict", payload):
            return False
        return row["status"] != "NG" or self._send(f"{self.prefix}/alert", payload)

    def _send(self, topic: str, payload: dict, retain: bool = False) -> bool:
        info = self.client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1, retain=retain)
        try:
            info.wait_for_publish(PUBACK_WAIT_S)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def _state(self) -> dict:
        snap = self.service.signals.snapshot()
        return {"ready": snap["ready"], "recipe": snap["recipe_id"], "error_code": snap["error_code"],
                "counters": snap["counters"]}

    def _backlog_metric(self) -> None:
        backlog = max(0, self.journal.last_verdict_id() - self.cursor)
        self.service.metrics.mqtt_backlog.labels(self.service.station).set(backlog)

    def close(self) -> None:
        """Send what the journal still holds (briefly, if connected), then say offline and go."""
        self.wake.set()
        deadline_rows = self.journal.last_verdict_id()
        for _ in range(50):
            if self.cursor >= deadline_rows or not self.connected.is_set():
                break
            self.stop.wait(0.1)
        self.stop.set()
        self.thread.join(timeout=PUBACK_WAIT_S + 2)
        if self.connected.is_set():
            self.client.publish(f"{self.prefix}/availability", "offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()


def _int(value):
    return int(value) if isinstance(value, str) and value.isdigit() else None
