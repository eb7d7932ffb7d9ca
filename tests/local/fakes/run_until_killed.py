"""Start a LocalAws with the fake entry points and one endpoint, print the pids, then wait.

Used to simulate a crash: the test SIGKILLs this process, leaving its children behind.
Usage: PYTHONPATH=tests/local run_until_killed.py STATE_DIR
"""

import json
import os
import sys
import time

from local_helpers import Clients, deploy, fake_settings

from local.runtime import LocalAws


def main() -> None:
    aws = LocalAws(sys.argv[1], settings=fake_settings()).start()
    os.environ.update(aws.env)
    clients = Clients(aws)
    name = deploy(clients, "survivor", environment={"FAKE_SPAWN_CHILD": "1"})
    reply = json.loads(
        clients.runtime.invoke_endpoint(EndpointName=name, Body=b"{}")["Body"].read()
    )
    # Writes reach the on-disk state within about a second; make sure they have before the
    # "crash", so the restart has the endpoint's model to start again.
    aws.save()
    print(json.dumps({"pids": [aws.emulator_pid, reply["pid"], reply["child_pid"]]}), flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
