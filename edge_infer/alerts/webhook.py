"""Webhook sink: POST the NG verdict as JSON; any non-2xx answer or network error is retried."""

from __future__ import annotations

import json
import urllib.request

from ..station import WebhookConfig
from .sink import Sink


class WebhookSink(Sink):
    name = "webhook"

    def __init__(self, cfg: WebhookConfig):
        self.cfg = cfg

    def deliver(self, verdict: dict, images) -> str | None:
        body = json.dumps({"event": "alert", **verdict}).encode()
        request = urllib.request.Request(self.cfg.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", **self.cfg.headers})
        with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as answer:  # raises on 4xx/5xx
            return f"HTTP {answer.status}"
