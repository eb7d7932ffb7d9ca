"""A stand-in inference server for the local-AWS tests (stdlib only).

Honours the serving contract: SAGEMAKER_BIND_TO_PORT, EASEL_HOST, EASEL_MODEL_DIR. It refuses
to start when the model folder has no Stable-diffusion/ folder (like a real server with no
checkpoint). POST /invocations echoes what it received, or fails / sleeps on request.
POST /invocations-response-stream sends ``parts`` JSON lines, chunked, ``delay`` seconds apart,
noting in the file ``record`` each part it sent and whether its client left; ``break`` ends the
stream without its last chunk; task ``bad-request`` is refused before streaming.
"""

import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MODEL_DIR = Path(os.environ.get("EASEL_MODEL_DIR", "/opt/ml/model"))
CHILD = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, status, payload, content_type="application/json"):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/ping":
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": "not found"})

    def _stream(self, request):
        payload = request.get("payload") or {}
        record = Path(payload["record"]) if payload.get("record") else None
        self.send_response(200)
        self.send_header("Content-Type", "application/jsonlines")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for index in range(int(payload.get("parts", 3))):
                line = json.dumps({"part": index, "echo": request["task"]}).encode() + b"\n"
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
                if record:
                    with record.open("a") as notes:
                        notes.write(f"sent {index}\n")
                if payload.get("break"):
                    self.close_connection = True
                    return
                time.sleep(float(payload.get("delay", 0)))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
            if record:
                with record.open("a") as notes:
                    notes.write("client left\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        request = json.loads(raw or b"{}")
        task = request.get("task")
        if self.path == "/invocations-response-stream" and task != "bad-request":
            self._stream(request)
            return
        if task == "fail":
            self._reply(500, {"error": "the model could not run this request"})
            return
        if task == "bad-request":
            self._reply(400, {"error": "payload.prompt is required"})
            return
        if task == "sleep":
            time.sleep(float(request["payload"]["seconds"]))
        if task == "big":
            self._reply(200, b"x" * int(request["payload"]["bytes"]), "application/octet-stream")
            return
        files = sorted(str(p.relative_to(MODEL_DIR)) for p in MODEL_DIR.rglob("*") if p.is_file())
        self._reply(
            200,
            {
                "echo": request,
                "model_files": files,
                "pid": os.getpid(),
                "port": int(os.environ["SAGEMAKER_BIND_TO_PORT"]),
                "child_pid": CHILD.pid if CHILD else None,
                "device": os.environ.get("EASEL_DEVICE"),
                "greeting": os.environ.get("FAKE_GREETING"),
            },
        )


def main():
    if not (MODEL_DIR / "Stable-diffusion").is_dir():
        print(
            f"error: no Stable-diffusion folder in {MODEL_DIR}; cannot load a model",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(3)
    global CHILD
    if os.environ.get("FAKE_SPAWN_CHILD"):
        # A worker process of our own, like real servers have: it must end with us.
        CHILD = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if os.environ.get("FAKE_IGNORE_TERM"):
        # A busy real server finishes its request before it ends: SIGTERM alone does not stop it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    delay = float(os.environ.get("FAKE_START_DELAY", "0"))
    time.sleep(delay)
    port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    server = ThreadingHTTPServer((os.environ.get("EASEL_HOST", "0.0.0.0"), port), Handler)
    print(f"fake serve on port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
