"""A stand-in training entry point for the local-AWS tests (stdlib only).

Reads the SageMaker layout under EASEL_OPT_ML. Fails (output/failure + exit 1) when the
concepts channel holds no images. Otherwise runs `max_train_steps` steps of
`FAKE_STEP_SECONDS`, writing checkpoints/progress.json and checkpoints/step-<n>.ckpt, then
model/Lora/<output_name>.safetensors. On SIGTERM it writes checkpoints/stopped-<n>.ckpt and
exits 0 with nothing in output/failure, as the training contract asks.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

OPT_ML = Path(os.environ.get("EASEL_OPT_ML", "/opt/ml"))
CHECKPOINTS = OPT_ML / "checkpoints"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
stop = False


def on_sigterm(_signum, _frame):
    global stop
    stop = True


def progress(step, total, status):
    CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    tmp = CHECKPOINTS / ".progress.json.tmp"
    tmp.write_text(json.dumps({"step": step, "total_steps": total, "status": status}))
    tmp.replace(CHECKPOINTS / "progress.json")


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    # written whole (rename), so a reader never sees an empty pid file
    (OPT_ML / "pid.tmp").write_text(str(os.getpid()))
    (OPT_ML / "pid.tmp").replace(OPT_ML / "pid")
    hp = json.loads((OPT_ML / "input/config/hyperparameters.json").read_text())
    channels = json.loads((OPT_ML / "input/config/inputdataconfig.json").read_text())
    concepts = OPT_ML / "input/data/concepts"
    images = [p for p in concepts.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
    if "concepts" not in channels or not images:
        (OPT_ML / "output").mkdir(parents=True, exist_ok=True)
        (OPT_ML / "output/failure").write_text(
            "The concepts channel has no images (.png, .jpg, .jpeg, .webp); add 5-50 photos."
        )
        print("no images", file=sys.stderr)
        sys.exit(1)
    total = int(hp.get("max_train_steps", "3"))
    delay = float(os.environ.get("FAKE_STEP_SECONDS", "0.2"))
    print(f"device={os.environ.get('EASEL_DEVICE')} images={len(images)}", flush=True)
    for step in range(1, total + 1):
        if stop:
            (CHECKPOINTS / f"stopped-{step - 1}.ckpt").write_text("checkpoint at stop")
            progress(step - 1, total, "stopped")
            return 0
        time.sleep(delay)
        (CHECKPOINTS / f"step-{step}.ckpt").write_text(f"weights after step {step}")
        progress(step, total, "running")
    lora = OPT_ML / "model/Lora"
    lora.mkdir(parents=True, exist_ok=True)
    (lora / f"{hp.get('output_name', 'out')}.safetensors").write_text("fake lora weights")
    progress(total, total, "completed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
