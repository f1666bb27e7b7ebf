"""A WSGI app served on a loopback port in a background thread: how the embedded stack runs
its stand-ins (Incident Manager, PagerDuty and Slack)."""

from __future__ import annotations

import threading
import time
from typing import Any

from werkzeug.serving import make_server


class LoopbackServer:
    """``app`` on ``host:port`` (port 0: any free one) until ``stop``."""

    def __init__(self, app: Any, name: str, port: int = 0, host: str = "127.0.0.1"):
        self.app = app
        self.server = make_server(host, port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackServer:
        self.thread.start()
        time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)
