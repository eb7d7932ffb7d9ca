"""Start a LocalAws with the fake entry points and one endpoint, print the pids, then wait.

Used to simulate a crash: the test SIGKILLs this process, leaving its children behind.
Usage: PYTHONPATH=tests/local run_until_killed.py STATE_DIR [--train]
With --train, a training job is also running (its trainer past its first step) when the pids
are printed; its name and the trainer's pid are printed too.
"""

import json
import os
import sys
import time

from local_helpers import Clients, deploy, fake_settings, start_training_job, wait_for

from local.runtime import LocalAws


def main() -> None:
    aws = LocalAws(sys.argv[1], settings=fake_settings()).start()
    os.environ.update(aws.env)
    clients = Clients(aws)
    name = deploy(clients, "survivor", environment={"FAKE_SPAWN_CHILD": "1"})
    reply = json.loads(
        clients.runtime.invoke_endpoint(EndpointName=name, Body=b"{}")["Body"].read()
    )
    printed = {"pids": [aws.emulator_pid, reply["pid"], reply["child_pid"]]}
    if "--train" in sys.argv[2:]:
        job = start_training_job(clients, "mid-training", concepts={"1.png": b"p"}, steps=1000)
        wait_for(lambda: any(k.endswith("step-1.ckpt")
                             for k in clients.keys(f"training/{job}/checkpoints/")), timeout=30)
        pid_file = aws.state_dir / "sagemaker" / "training-jobs" / job / "opt_ml" / "pid"
        printed.update(job=job, trainer_pid=int(pid_file.read_text()))
    # Writes reach the on-disk state within about a second; make sure they have before the
    # "crash", so the restart has the endpoint's model to start again.
    aws.save()
    print(json.dumps(printed), flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
