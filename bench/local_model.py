"""Where `make local MODEL=<big checkpoint>` spends its time, leg by leg (CPU only).

    python bench/local_model.py                      # 2 GiB of random bytes, transfer legs
    python bench/local_model.py --size-mib 7168      # the same with 7 GiB
    python bench/local_model.py --checkpoint sd15.safetensors --deploy
    python bench/local_model.py --build-sd15 --deploy  # full-size random-weight SD1.5, fp16

Legs (each printed with seconds and MB/s): the upload into the local S3 through
`scripts.upload_model`'s uploader (multipart, parallel parts, uncompressed prefix, as
`make local` does), the snapshot of the emulator's state right after it, the endpoint-side
download through the local SageMaker's S3 code (`local.sagemaker.s3io`), and with `--deploy`
the whole path from the upload's start to an InService endpoint running the real inference
server on this machine. Everything runs under a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), *(str(ROOT / "containers" / p) for p in
                             ("contracts", "inference", "training", "webui"))]

MIB = 1024 * 1024


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        remaining = size
        while remaining:
            chunk = min(remaining, 64 * MIB)
            out.write(os.urandom(chunk))
            remaining -= chunk
    return path


def build_sd15(folder: Path) -> Path:
    """A full-size SD1.5 single file in float16 (~2 GB), no YAML: as downloaded from a site."""
    import torch

    from easel_inference.builder import build_pipeline, save_single_file

    pipe = build_pipeline(arch="sd15", size="full", seed=0).to(torch.float16)
    return save_single_file(pipe, folder / "sd15-random.safetensors", embed_configs=False,
                            write_yaml=False)


_EMULATOR_PID: list[int] = []


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_seconds() -> tuple[float, float]:
    """CPU time so far of this process (all threads) and of the emulator subprocess."""
    own = os.times()
    return own.user + own.system, sum(process_cpu_seconds(pid) for pid in _EMULATOR_PID)


class Leg:
    """Wall time, CPU time (ours + the emulator's) and MB/s of one step."""

    def __init__(self, results: dict, name: str, size: int | None = None) -> None:
        self.results, self.name, self.size = results, name, size

    def __enter__(self) -> Leg:
        self.started, self.cpu = time.monotonic(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        seconds = time.monotonic() - self.started
        client, emulator = (now - then for now, then in zip(cpu_seconds(), self.cpu, strict=True))
        cpu = client + emulator
        entry = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                 "cpu_seconds_emulator": round(emulator, 2)}
        line = f"{self.name:<36} {seconds:7.2f} s  cpu {client:6.2f} + {emulator:6.2f} s"
        if self.size:
            entry["MB_per_s"] = round(self.size / seconds / 1e6, 1)
            # CPU seconds per GB (client + emulator): on a shared, loaded machine the wall
            # time says more about the neighbours; this says what the leg itself costs.
            entry["cpu_s_per_GB"] = round(cpu / (self.size / 1e9), 2)
            line += (f"  {entry['MB_per_s']:7.1f} MB/s"
                     f"  ({entry['cpu_s_per_GB']:.1f} CPU-s/GB)")
        self.results[self.name] = entry
        print(line, flush=True)


def upload(bucket: str, source: Path, prefix: str, state_dir: Path) -> None:
    """`scripts.upload_model --uncompressed`'s client and uploader (no checkpoint checks)."""
    from scripts.layout import Plan, PlannedFile
    from scripts.upload_model import MIB as UPLOAD_MIB
    from scripts.upload_model import Uploader, _resolve_bucket, build_parser

    _, s3 = _resolve_bucket(build_parser().parse_args([str(source), "--bucket", bucket]))
    stat = source.stat()
    plan = Plan(name="bench", files=(PlannedFile(
        arcname=f"Stable-diffusion/{source.name}", source=source, size=stat.st_size,
        mtime=int(stat.st_mtime)),))
    uploader = Uploader(s3, bucket=bucket, state_dir=state_dir, part_size=64 * UPLOAD_MIB,
                        jobs=4, quiet=True, say=lambda _m: None)
    uploader.upload_files(plan, prefix, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--size-mib", type=int, default=2048,
                        help="size of the random-bytes file (default 2048)")
    source.add_argument("--checkpoint", type=Path, help="use this checkpoint file")
    source.add_argument("--build-sd15", action="store_true",
                        help="build a full-size random-weight SD1.5 checkpoint first")
    parser.add_argument("--deploy", action="store_true",
                        help="also deploy it and time the whole path to InService "
                        "(needs a real checkpoint and the inference package)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="deploy with EASEL_WARMUP=0 (no warm-up generation and no measured "
                        "speed; on a CPU the warm-up is two 1-step runs at 64x64 and 128x128)")
    parser.add_argument("--work", type=Path, default=None,
                        help="work folder (default: a temporary folder under /tmp)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from local.runtime import LocalAws
    from local.sagemaker import s3io
    from local.studio import show_progress

    show_progress()  # each endpoint step as `make local` shows it: download, load, warm-up

    work = Path(tempfile.mkdtemp(prefix="easel-bench-", dir=args.work))
    results: dict = {}
    try:
        if args.checkpoint:
            model = args.checkpoint.resolve()
        elif args.build_sd15:
            with Leg(results, "build random-weight SD1.5"):
                model = build_sd15(work)
        else:
            model = random_file(work / "random.safetensors", args.size_mib * MIB)
        size = model.stat().st_size
        results["bytes"] = size
        print(f"model: {model} ({size / 1e9:.2f} GB)", flush=True)

        command_started = time.monotonic()
        starting = Leg(results, "start the local AWS").__enter__()
        with LocalAws(work / "state", clean=True, device="cpu") as aws:
            starting.__exit__(None, None, None)
            _EMULATOR_PID.append(aws.emulator_pid)
            s3 = aws.client("s3")
            bucket = aws.env["EASEL_BUCKET"]
            prefix = "models/bench/"

            os.environ.update(aws.env)  # as `make local` does: the scripts find the local AWS
            with Leg(results, "upload (multipart, 4 parts at once)", size):
                upload(bucket, model, prefix, work / "upload-state")

            with Leg(results, "snapshot after the upload"):
                aws.save()  # what the snapshot loop does next

            with Leg(results, "endpoint download (streamed GET)", size):
                count = s3io.download_prefix(s3, f"s3://{bucket}/{prefix}", work / "download",
                                             field="bench")
            assert count == 1
            shutil.rmtree(work / "download")

            if args.deploy:
                with Leg(results, "deploy: create -> InService"):
                    endpoint = deploy(aws, f"s3://{bucket}/{prefix}",
                                      environment={"EASEL_WARMUP": "0"} if args.no_warmup else {})
                results["endpoint"] = endpoint
                # the inference server's own CPU time: start-up, model load and warm-up (what a
                # loaded machine stretches; on idle cores the wall time nears this / the cores)
                server = aws._stand_in.endpoints.serving(endpoint)  # noqa: SLF001 - bench only
                if server is not None:
                    results["server_cpu_seconds"] = round(
                        process_cpu_seconds(server.process.pid), 1)
                    print(f"{'inference server CPU (start+load+warm)':<36} "
                          f"{results['server_cpu_seconds']:8.1f} CPU-s", flush=True)
                elapsed = time.monotonic() - command_started
                results["start_to_in_service_s"] = round(elapsed, 1)
                print(f"{'start -> upload -> InService':<36} {elapsed:8.2f} s", flush=True)
        results["load_average_1min"] = os.getloadavg()[0]
        results["cpu_count"] = os.cpu_count()
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def deploy(aws, model_uri: str, *, environment: dict[str, str], timeout: float = 1800) -> str:
    """Create model, config and endpoint (as the portal does for a prefix) and wait."""
    sm = aws.client("sagemaker")
    name = "bench"
    sm.create_model(
        ModelName=name, ExecutionRoleArn=aws.env["EASEL_EXECUTION_ROLE_ARN"],
        PrimaryContainer={
            "Image": aws.env["EASEL_INFERENCE_IMAGE"],
            "Environment": environment,
            "ModelDataSource": {"S3DataSource": {
                "S3Uri": model_uri, "S3DataType": "S3Prefix", "CompressionType": "None"}},
        },
    )
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InstanceType": "ml.g5.xlarge",
        "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = sm.describe_endpoint(EndpointName=name)
        if status["EndpointStatus"] == "InService":
            return name
        if status["EndpointStatus"] == "Failed":
            raise SystemExit(f"the endpoint failed: {status.get('FailureReason')}")
        time.sleep(0.5)
    raise SystemExit("the endpoint did not reach InService in time")


if __name__ == "__main__":
    sys.exit(main())
