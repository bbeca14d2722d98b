"""A small OpenAI-compatible upstream on loopback (stdlib http.server in a thread) for gateway tests
and the benchmark: answers /v1/chat/completions, streaming included, and records what it received."""

import json
import math
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class UpstreamState:
    fail_with: int | None = None  # answer every request with this HTTP status
    completion_tokens: int = 5
    received: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def prompt_tokens(messages: list) -> int:
    # A plausible tokenizer: about four bytes per token (always below the gateway's byte-count bound).
    return sum(math.ceil(len(str(m.get("content", "")).encode()) / 4) + 3 for m in messages)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True
    state: UpstreamState

    def log_message(self, format, *args):  # quiet
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        with self.state.lock:
            self.state.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.state.fail_with:
            self._json(self.state.fail_with, {"error": {"message": "upstream trouble", "type": "server_error"}})
            return
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": "not found"}})
            return
        tokens_in = prompt_tokens(body.get("messages", []))
        tokens_out = min(self.state.completion_tokens, body.get("max_tokens") or 10**9)
        words = ["hello"] * tokens_out
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for word in words:
                self._chunk(
                    {
                        "id": "c1",
                        "object": "chat.completion.chunk",
                        "model": body["model"],
                        "choices": [{"index": 0, "delta": {"content": word + " "}}],
                    }
                )
            if (body.get("stream_options") or {}).get("include_usage"):
                self._chunk(
                    {
                        "id": "c1",
                        "object": "chat.completion.chunk",
                        "model": body["model"],
                        "choices": [],
                        "usage": {
                            "prompt_tokens": tokens_in,
                            "completion_tokens": tokens_out,
                            "total_tokens": tokens_in + tokens_out,
                        },
                    }
                )
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")
            return
        self._json(
            200,
            {
                "id": "c1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": tokens_in,
                    "completion_tokens": tokens_out,
                    "total_tokens": tokens_in + tokens_out,
                },
            },
        )

    def _chunk(self, value: dict) -> None:
        self._write_chunk(b"data: " + json.dumps(value).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, status: int, value: dict) -> None:
        raw = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


class Upstream:
    def __init__(self, port: int = 0):
        self.state = UpstreamState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "Upstream":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


if __name__ == "__main__":  # a standalone upstream for the benchmark: python -m tests.policies.upstream PORT
    import sys

    with Upstream(int(sys.argv[1])) as upstream:
        print(upstream.base_url, flush=True)
        threading.Event().wait()
