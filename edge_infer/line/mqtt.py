"""MQTT: verdicts, alerts and state to a broker (paho-mqtt), none lost while the broker is away.

Topics under ``topic_prefix`` (default ``lineside/<station>``):

- ``availability``: ``online`` (retained) once connected; the broker publishes the last will
  ``offline`` (retained) if this service vanishes;
- ``verdict``: every verdict, QoS 1, JSON with the journal ``id`` and the ``inspection`` id;
- ``alert``: NG verdicts, QoS 1;
- ``state``: ready, recipe, error code and counters, retained, when they change.

Delivery reads the journal, not memory: a cursor (table ``line_cursors``) holds the last
verdict up to which the broker acknowledged everything (PUBACK). Up to ``inflight`` messages
are on the wire at once (paho's in-flight window, ``max_inflight_messages_set``), so the rate
is about ``inflight`` / round trip rather than 1 / round trip; the cursor advances over the
acknowledged prefix only. While the broker is down nothing advances; when it returns,
everything after the cursor is sent in order. At least once: around a disconnect a verdict
can arrive twice — consumers deduplicate by ``id``. paho reconnects with exponential backoff
between ``reconnect_min_s`` and ``reconnect_max_s`` (2 s by default, so the line is back
within about 2 s of the broker).
"""

from __future__ import annotations

import json
import threading
from collections import deque

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
        client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=max(cfg.reconnect_max_s, cfg.reconnect_min_s))
        client.max_inflight_messages_set(cfg.inflight)
        client.max_queued_messages_set(0)  # the journal is the queue; paho only holds the window
        client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
        self.window: deque[tuple[int, mqtt.MQTTMessageInfo]] = deque()  # (verdict id or 0, paho's info)
        self.sent_upto = self.cursor  # the last verdict handed to paho (the delivery thread's own)
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
                self.window.clear()  # what was not acknowledged goes again from the cursor (at least once)
                self.sent_upto = self.cursor
                continue
            state = self._state()
            if state != last_state and self._send(f"{self.prefix}/state", state, retain=True):
                last_state = state
            self._advance()
            rows = self.journal.verdicts_after(self.sent_upto, BATCH)
            if not rows:
                if self.window:  # the last PUBACKs: move the cursor as they come
                    self._wait_head(0.05)
                else:
                    self.wake.wait(0.2)
                    self.wake.clear()
                continue
            for row in rows:
                if not self._send_verdict(row):
                    break  # the broker went away: resume from the cursor when it is back

    def _send_verdict(self, row: dict) -> bool:
        """Hand one verdict (and its alert) to paho without waiting for its PUBACK; False when the
        broker is gone. Waits only while the in-flight window is full."""
        tags = row["detail"].get("tags") or {}
        recipe = _int(tags.get("recipe"))
        scale = self.service.recipes.scale(recipe) if recipe is not None else None
        payload = {"id": row["id"], "station": row["station"], "inspection": _int(tags.get("inspection")),
                   "recipe": recipe, "status": row["status"],
                   "score": scale(row["score"]) if scale else row["score"],
                   "threshold": scale(row["threshold"]) if scale else row["threshold"],
                   "scale": scale.name if scale else "raw", "score_raw": row["score"],
                   "threshold_raw": row["threshold"], "camera": row["camera"], "frame_id": row["frame_id"],
                   "decided_at": row["decided_at"], "reason": row["reason"]}
        topics = ["verdict", "alert"] if row["status"] == "NG" else ["verdict"]
        for n, topic in enumerate(topics):
            while len(self.window) >= self.cfg.inflight:
                if not self._wait_head(PUBACK_WAIT_S):
                    return False
            if not self.connected.is_set() or self.stop.is_set():
                return False
            info = self.client.publish(f"{self.prefix}/{topic}", json.dumps(payload, separators=(",", ":")), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return False
            # the cursor passes the row once its last message (the alert, for NG) is acknowledged
            self.window.append((row["id"] if n == len(topics) - 1 else 0, info))
        self.sent_upto = row["id"]
        return True

    def _wait_head(self, timeout_s: float) -> bool:
        """Wait for the oldest message in flight to be acknowledged; advance the cursor."""
        _, info = self.window[0]
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):
            return False
        self._advance()
        return info.is_published()

    def _advance(self) -> None:
        """Move the cursor over the acknowledged prefix of the window (PUBACKs can come in any order)."""
        advanced = None
        while self.window and self.window[0][1].is_published():
            verdict_id, _ = self.window.popleft()
            advanced = verdict_id or advanced
        if advanced:
            self.cursor = advanced
            self.journal.set_cursor("mqtt", self.cursor)

    def _send(self, topic: str, payload: dict, retain: bool = False) -> bool:
        """One message, waiting for its PUBACK (the retained state: rare, and outside the window)."""
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
