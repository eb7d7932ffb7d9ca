"""The reliability run: `make local` under load, faults and hostile input, on loopback only.

    python bench/reliability.py [--clients 50] [--seconds 60] [--fuzz 150] [--out FILE]

Starts `python -m local.studio` (CPU, fresh state folder, free port), deploys the demo model
through the portal's form, then:

1. load: N concurrent A1111 clients post `/sdapi/v1/txt2img` (64x64, 1 step) for a fixed time;
   requests/s, p50/p95, answers by status; every 200 must carry a decodable PNG, and the
   caller's image records (`/sdapi/v1/...` saves each image to the gallery) must count them all;
2. inference crash: SIGKILL of the endpoint's server process mid-load; the errors clients get
   meanwhile (they must be 4xx/5xx with a message, not hangs) and the time until a 200 again
   (the local SageMaker replaces the dead process, as SageMaker replaces an unhealthy instance);
3. studio crash mid-training: a LoRA training job runs on the demo concept set (local mode's
   trainer process past its first step) when the studio process itself is SIGKILLed; it is
   started again on the same state folder and port: it must end the orphans it left (the
   trainer included), serve again, and the job must end with a clear outcome (failed with the
   reason, here), not stay InProgress;
4. fuzz: Hypothesis bodies on `/invocations` (the endpoint server) and the portal's JSON routes:
   0 answers >= 500 and 0 hangs.

Prints one table (and writes it as JSON with --out). Bounded: every phase has its own time
limit and the studio is always stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
URL_RE = re.compile(r"^\s*portal:\s+(http://\S+?)/?\s*$")
PASSWORD_RE = re.compile(r"^\s*password:\s+(\S+)\s*$")
DEMO_RE = re.compile(r"(s3://\S+/models/demo/model\.tar\.gz)")
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
BODY_CSRF_RE = re.compile(r'data-csrf="([^"]+)"')
GENERATE = {"prompt": "reliability", "steps": 1, "width": 64, "height": 64, "seed": 1}
REQUEST_TIMEOUT_S = 90.0
# how long a killed inference server may take to be replaced (a model load on a loaded CPU)
RECOVERY_S = 240.0


class Studio:
    """`python -m local.studio` in its own process group, with what it printed."""

    def __init__(self, state: Path, port: int = 0) -> None:
        self.state = state
        self.port = port
        self.url = ""
        self.password = ""
        self.demo_uri = ""
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 300.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "local.studio", "--state", str(self.state), "--device", "cpu",
             "--port", str(self.port)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        if not ready.wait(timeout) or not self.url:
            raise RuntimeError("the studio did not print its portal URL in time")

    def _read(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if match := URL_RE.match(line):
                self.url = match.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
            elif match := PASSWORD_RE.match(line):
                self.password = match.group(1)
                ready.set()
            elif match := DEMO_RE.search(line):
                self.demo_uri = match.group(1)
        ready.set()

    def kill(self) -> None:
        """SIGKILL of the studio process alone: its children are left running (orphans)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def sign_in(base: str, user: str, password: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S)
    token = CSRF_RE.search(client.get("/login").text).group(1)
    client.post("/login", data={"username": user, "password": password, "csrf_token": token})
    page = client.get("/account")
    return client, BODY_CSRF_RE.search(page.text).group(1)


def deploy_demo(studio: Studio, admin: httpx.Client, csrf: str, timeout: float = 420.0) -> float:
    started = time.monotonic()
    answer = admin.post("/endpoints", data={
        "name": "demo", "model": studio.demo_uri, "instance_type": "ml.g5.xlarge",
        "mode": "realtime", "min_instances": "1", "max_instances": "1", "idle_ttl_hours": "0",
        "csrf_token": csrf})
    if answer.status_code >= 400:
        raise RuntimeError(f"deploy refused: {answer.status_code} {answer.text[:300]}")
    while time.monotonic() - started < timeout:
        rows = admin.get("/endpoints/status").json()["endpoints"]
        row = next((r for r in rows if r["endpoint"] == "easel-demo"), None)
        if row and row["status"] == "InService":
            return time.monotonic() - started
        if row and row["status"] == "Failed":
            raise RuntimeError(f"the demo endpoint failed: {row.get('failure')}")
        time.sleep(2)
    raise RuntimeError("the demo endpoint was not InService in time")


# the portal runs at most this many generations per user at once (EASEL_GENERATION_JOBS_PER_USER)
JOBS_PER_USER = 4
LOAD_PASSWORD = "reliability-load-pw"  # noqa: S105 - a throwaway local account


def load_users(admin: httpx.Client, csrf: str, clients: int) -> list[tuple[str, str]]:
    """Enough users that `clients` A1111 clients (JOBS_PER_USER each) are not held back by the
    per-user bound: the load measures the portal and the endpoint, not one user's cap."""
    users = []
    for index in range((clients + JOBS_PER_USER - 1) // JOBS_PER_USER):
        name = f"load{index}"
        answer = admin.post("/users", data={"username": name, "password": LOAD_PASSWORD,
                                            "role": "user", "csrf_token": csrf})
        if answer.status_code >= 400:
            raise RuntimeError(f"adding user {name} refused: {answer.status_code}")
        users.append((name, LOAD_PASSWORD))
    return users


def _is_png(answer: httpx.Response) -> bool:
    try:
        return base64.b64decode(answer.json()["images"][0]).startswith(b"\x89PNG")
    except (ValueError, KeyError, IndexError, TypeError):
        return False


class Load:
    """N clients posting txt2img until told to stop; latencies and statuses of every answer."""

    def __init__(self, base: str, auth: list[tuple[str, str]], clients: int) -> None:
        self.base, self.auth, self.clients = base, auth, clients
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.ok_without_image = 0
        self.events: list[tuple[float, str]] = []
        self.first_error_text: dict[str, str] = {}

    def _client(self, auth: tuple[str, str]) -> None:
        with httpx.Client(base_url=self.base, auth=auth, timeout=REQUEST_TIMEOUT_S) as api:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    answer = api.post("/sdapi/v1/txt2img", json=GENERATE)
                    status = str(answer.status_code)
                except httpx.TimeoutException:
                    answer, status = None, "timeout"
                except httpx.HTTPError as exc:
                    answer, status = None, f"conn:{exc.__class__.__name__}"
                elapsed = time.monotonic() - started
                with self.lock:
                    self.latencies.append(elapsed)
                    self.statuses[status] += 1
                    self.events.append((time.monotonic(), status))
                    if answer is not None and answer.status_code == 200 and not _is_png(answer):
                        self.ok_without_image += 1
                    if answer is not None and answer.status_code != 200:
                        self.first_error_text.setdefault(status, answer.text[:200])
                if answer is not None and answer.status_code in (429, 503):
                    time.sleep(float(answer.headers.get("Retry-After", "1") or 1))
                elif answer is None or answer.status_code >= 500:
                    time.sleep(1)  # as a client would: no hot loop against a failing server

    def run(self, seconds: float) -> float:
        threads = [threading.Thread(target=self._client, daemon=True,
                                    args=(self.auth[index % len(self.auth)],))
                   for index in range(self.clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        self.stop.wait(seconds)
        self.stop.set()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S + 5)
        return time.monotonic() - started


def wait_for_200(api: httpx.Client, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if api.post("/sdapi/v1/txt2img", json=GENERATE).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(2)
    return None


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def stored_images(state: Path, demo_uri: str) -> int | None:
    """PNG objects under `outputs/` in the local S3 (each generated image the portal saved)."""
    import boto3

    try:
        port = int((state / "run" / "emulator.port").read_text())
    except (OSError, ValueError):
        return None
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id="local", aws_secret_access_key="local")  # noqa: S106
    bucket = demo_uri.removeprefix("s3://").split("/", 1)[0]
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="outputs/"):
        count += sum(1 for item in page.get("Contents", []) if item["Key"].endswith(".png"))
    return count


def server_pid(state: Path) -> int | None:
    """The demo endpoint's inference server, from the local AWS's process list."""
    entries = json.loads((state / "run" / "processes.json").read_text())
    for pid, entry in entries.items():
        command = str(entry.get("command"))
        if "easel_inference" in command or any(Path(part).name == "serve"
                                               for part in command.split()):
            return int(pid)
    return None


def server_port(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"SAGEMAKER_BIND_TO_PORT="):
            return int(item.split(b"=", 1)[1])
    return None


TRAINING_JOB = "crash"  # easel-crash once the deployment id is added
TRAINING_ENDED = ("Completed", "Failed", "Stopped")
INSTANCE_RE = re.compile(r'<select name="instance_type"><option value="([^"]+)"')


def start_training(admin: httpx.Client, csrf: str, demo_uri: str) -> str:
    """A long LoRA job on the demo concept set (64 px, rank 4), submitted through the form."""
    page = admin.get("/training").text
    instance = INSTANCE_RE.search(page)
    if instance is None:
        raise RuntimeError("the training page offers no instance type")
    answer = admin.post("/training", data={
        "name": TRAINING_JOB, "instance_type": instance.group(1), "model_s3_uri": demo_uri,
        "concept_set": "admin/demo", "instance_prompt": "a photo of sks toy",
        "max_train_steps": "5000", "rank": "4", "resolution": "64", "csrf_token": csrf})
    if answer.status_code >= 400:
        raise RuntimeError(f"training refused: {answer.status_code} {answer.text[:300]}")
    return f"easel-{TRAINING_JOB}"


def training_status(admin: httpx.Client, job: str) -> dict[str, Any]:
    answer = admin.get(f"/training/{job}/status")
    return answer.json() if answer.status_code == 200 else {"status": f"HTTP {answer.status_code}"}


def wait_training(admin: httpx.Client, job: str, until: Any, timeout: float) -> dict[str, Any]:
    """The job's status once `until(status)` holds, or the last one seen after `timeout`."""
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = training_status(admin, job)
        if until(state):
            return state
        time.sleep(2)
    return {**state, "timed_out": True}


def _steps_done(state: dict[str, Any]) -> int:
    progress = state.get("progress")
    return int(progress.get("step") or 0) if isinstance(progress, dict) else 0


def trainer_pid(state: Path) -> int | None:
    """The training job's process, from the local AWS's process list."""
    try:
        entries = json.loads((state / "run" / "processes.json").read_text())
    except (OSError, ValueError):
        return None
    for pid, entry in entries.items():
        command = str(entry.get("command"))
        if "easel_training" in command or any(Path(part).name == "train"
                                              for part in command.split()):
            return int(pid)
    return None


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def fuzz(base: str, paths: list[str], examples: int, *, auth: Any = None,
         headers: dict[str, str] | None = None) -> Counter[str]:
    """Hypothesis bodies on each path; answers by status class (5xx and timeouts counted)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from easel_contracts.invocations import Txt2ImgRequest

    scalars = (st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64)
               | st.floats(allow_nan=False) | st.text(max_size=60))
    anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                            max_leaves=15)
    near = st.dictionaries(st.sampled_from(sorted(Txt2ImgRequest.model_fields)), scalars,
                           max_size=4).map(lambda changes: {**GENERATE, **changes})
    tasks = st.sampled_from(["txt2img", "img2img", "options", "sd-models", "loras", "nope", 7])
    envelope = st.fixed_dictionaries({"task": tasks, "payload": near | anything})
    deep = st.integers(min_value=50, max_value=5000).map(lambda n: "[" * n + "]" * n)
    seen: Counter[str] = Counter()

    with httpx.Client(base_url=base, auth=auth, timeout=REQUEST_TIMEOUT_S,
                      headers=headers or {}) as client:
        def prober(path: str) -> Any:
            @settings(max_examples=examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(body=(envelope if path == "/invocations" else near | anything)
                   .map(json.dumps) | deep)
            def probe(body: str) -> None:
                try:
                    answer = client.post(path, content=body,
                                         headers={"Content-Type": "application/json"})
                    seen[f"{answer.status_code // 100}xx"] += 1
                    if answer.status_code >= 500:
                        seen[f"5xx {path} {answer.status_code}"] += 1
                except httpx.TimeoutException:
                    seen["hang"] += 1
                except httpx.HTTPError as exc:
                    seen[f"connection {exc.__class__.__name__} {path}"] += 1

            return probe

        for path in paths:
            prober(path)()
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fuzz", type=int, default=150, help="examples per fuzzed route")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows: list[tuple[str, str]] = []
    phases: list[tuple[str, float]] = []

    def stopped(_signum: int, _frame: object) -> None:
        raise TimeoutError("stopped from outside (make reliability's 15-minute bound)")

    signal.signal(signal.SIGTERM, stopped)
    state = Path(tempfile.mkdtemp(prefix="easel-reliability-"))
    studio = Studio(state)
    started = time.monotonic()
    try:
        studio.start()
        rows.append(("studio start", f"{time.monotonic() - started:.0f} s"))
        admin, csrf = sign_in(studio.url, "admin", studio.password)
        rows.append(("demo endpoint InService", f"{deploy_demo(studio, admin, csrf):.0f} s"))
        phases.append(("start + deploy", time.monotonic() - started))
        mark = time.monotonic()
        auth = ("admin", studio.password)
        users = load_users(admin, csrf, args.clients)
        with httpx.Client(base_url=studio.url, auth=auth, timeout=REQUEST_TIMEOUT_S) as api:
            before = stored_images(state, studio.demo_uri)

            # 1. load
            load = Load(studio.url, users, args.clients)
            wall = load.run(args.seconds)
            ok = load.statuses.get("200", 0)
            after = stored_images(state, studio.demo_uri)
            rows += [
                (f"load: {args.clients} clients ({len(users)} users) x {args.seconds:.0f} s",
                 f"{len(load.latencies)} requests, {len(load.latencies) / wall:.2f} req/s"),
                ("load: latency p50 / p95",
                 f"{percentile(load.latencies, .5):.2f} s / "
                 f"{percentile(load.latencies, .95):.2f} s"),
                ("load: answers by status", ", ".join(f"{k}: {v}" for k, v in
                                                      sorted(load.statuses.items()))),
                ("load: 200 without a PNG image", str(load.ok_without_image)),
                ("load: images saved to outputs/ / 200s",
                 f"{(after - before) if None not in (before, after) else 'n/a'} / {ok}"),
            ]

            # the work the load left queued drains first (bounded)
            drained = wait_for_200(api, 240.0)
            rows.append(("after load: next single request answers 200 after",
                         f"{drained:.0f} s" if drained is not None else "not within 240 s"))
            phases.append(("load + drain", time.monotonic() - mark))
            mark = time.monotonic()

            # 2. the inference server is killed mid-load (a light load: 2 clients)
            pid = server_pid(state)
            crash = Load(studio.url, [auth], 2)
            runner = threading.Thread(target=crash.run, args=(RECOVERY_S + 5,), daemon=True)
            runner.start()
            time.sleep(5)
            killed_at = time.monotonic()
            if pid is None:
                raise RuntimeError("the endpoint's server process was not found")
            os.kill(pid, signal.SIGKILL)
            recovered = None
            while time.monotonic() - killed_at < RECOVERY_S and recovered is None:
                time.sleep(0.5)
                with crash.lock:
                    recovered = next((t for t, s in crash.events if t > killed_at + 1
                                      and s == "200" and any(
                                          t2 > killed_at and s2 != "200"
                                          for t2, s2 in crash.events)), None)
            crash.stop.set()
            runner.join(REQUEST_TIMEOUT_S + 10)
            errors = {k: v for k, v in crash.statuses.items() if k != "200"}
            rows += [
                ("inference killed: answers meanwhile", ", ".join(
                    f"{k}: {v}" for k, v in sorted(crash.statuses.items()))),
                ("inference killed: first error", "; ".join(
                    f"{k}: {crash.first_error_text.get(k, '')[:90]}" for k in sorted(errors))
                 or "none"),
                ("inference killed: back to 200 after",
                 f"{recovered - killed_at:.1f} s" if recovered
                 else f"not within {RECOVERY_S:.0f} s"),
            ]

            phases.append(("inference kill", time.monotonic() - mark))
            mark = time.monotonic()

            # 4. fuzz (before the studio restart), once the replaced server answers again: a
            # server still loading answers 503 and the portal 502, which is no finding
            if recovered is None:
                ready = wait_for_200(api, RECOVERY_S)
                rows.append(("before fuzzing: the endpoint answers 200 after",
                             f"{ready:.0f} s more" if ready is not None else "never"))
            pid = server_pid(state)
            port = server_port(pid) if pid else None
            inv = fuzz(f"http://127.0.0.1:{port}", ["/invocations"], args.fuzz) if port else {}
            portal = fuzz(studio.url, ["/sdapi/v1/txt2img", "/sdapi/v1/img2img",
                                       "/sdapi/v1/options"], args.fuzz, auth=auth)
            phases.append(("fuzz", time.monotonic() - mark))
            mark = time.monotonic()
            rows += [
                ("fuzz /invocations", ", ".join(f"{k}: {v}" for k, v in sorted(inv.items()))),
                ("fuzz portal JSON routes", ", ".join(f"{k}: {v}"
                                                      for k, v in sorted(portal.items()))),
            ]
            del api

        # 3. the studio is killed with SIGKILL mid-training, started again on the same state
        # folder and port; the job must end with its outcome, the trainer must not live on
        job = start_training(admin, csrf, studio.demo_uri)
        before_kill = wait_training(admin, job, lambda s: _steps_done(s) >= 1
                                    or s.get("status") in TRAINING_ENDED, 300.0)
        trainer = trainer_pid(state)
        rows.append(("studio SIGKILL: training job at the kill", (
            f"{before_kill.get('status')} / {before_kill.get('secondary_status')}, step "
            f"{_steps_done(before_kill)}, trainer pid {trainer or 'not found'}")))
        port_before = studio.port
        studio.kill()
        restarted = time.monotonic()
        studio.start()
        health = httpx.get(f"{studio.url}/health", timeout=10).status_code
        rows.append(("studio SIGKILL -> restart serving", f"{time.monotonic() - restarted:.0f} s "
                     f"(portal /health {health}; same port: "
                     f"{'yes' if studio.port == port_before else 'no'} {studio.port})"))
        rows.append(("studio SIGKILL: trainer process after restart",
                     "n/a" if trainer is None
                     else "still running (orphan)" if pid_alive(trainer) else "ended"))
        admin, csrf = sign_in(studio.url, "admin", studio.password)
        after = wait_training(admin, job, lambda s: s.get("status") in TRAINING_ENDED, 120.0)
        rows.append(("studio SIGKILL: training job after restart", (
            f"{after.get('status')}" + (" (still not ended after 120 s)"
                                        if after.get("timed_out") else "")
            + (f": {str(after.get('failure'))[:110]}" if after.get("failure") else ""))))
        phases.append(("studio kill mid-training", time.monotonic() - mark))
    except Exception as exc:  # noqa: BLE001 - the table says where the run stopped
        rows.append(("run stopped", f"{exc.__class__.__name__}: {exc}"[:200]))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the studio's stop is not interrupted
        studio.stop()
    rows.append(("phases", ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases)))
    rows.append(("total run time", f"{time.monotonic() - started:.0f} s"))
    width = max(len(name) for name, _ in rows)
    print("\n| check".ljust(width + 3) + " | result |")
    print("|" + "-" * (width + 2) + "|--------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    if args.out:
        args.out.write_text(json.dumps(dict(rows), indent=2))
    return 0 if not any(name == "run stopped" for name, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
