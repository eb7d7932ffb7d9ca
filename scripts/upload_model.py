"""Check, pack and upload a model to the deployment's data bucket; print the S3 URI to use.

    python -m scripts.upload_model PATH [--name NAME] [--uncompressed | --lora]

PATH is a checkpoint file (.safetensors, or .ckpt/.pt converted through a weights-only load), a
diffusers pipeline folder, or an A1111 `models/` folder (Stable-diffusion/, Lora/, ControlNet/,
VAE/). By default the files are packed, as a stream, into `models/<name>/model.tar.gz`; with
`--uncompressed` they go to the prefix `models/<name>/` (faster endpoint starts for big models).
With `--lora` LoRA files go straight into the LoRA library (`loras/`), where running endpoints
pick them up on demand. Uploads are multipart with parallel parts; an interrupted upload resumes
when the same command runs again (only missing parts are sent).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import shutil
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from botocore.config import Config
from botocore.exceptions import ClientError
from tqdm import tqdm

from easel_contracts.model_manifest import ModelManifest, manifest_key
from scripts.cli import ScriptError, UsageError, run_main
from scripts.layout import Plan, PlannedFile, Planner, build_manifest
from scripts.model_files import ModelFileError
from scripts.multipart import (
    MIN_PART_SIZE,
    MultipartUpload,
    PartCounts,
    PartWriter,
    StateFile,
    UploadInterrupted,
    default_state_dir,
    mark_done,
    open_upload,
)
from scripts.stack import StackOutputs, add_target_arguments, resolve_target

MODELS_PREFIX = "models/"
LORAS_PREFIX = "loras/"
MIB = 1024 * 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.upload_model",
        description="Check, pack and upload a model (or LoRAs) to the Easel data bucket.",
        epilog="Prints the S3 URI to paste into the portal's deploy form. Rerun the same command "
               "to resume an interrupted upload.",
    )
    parser.add_argument("path", type=Path, help="checkpoint file, diffusers folder, A1111 models "
                        "folder, or (with --lora) a LoRA file or folder of LoRAs")
    parser.add_argument("--name", help="model name in the bucket (default: from the file/folder)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--uncompressed", action="store_true",
                      help="upload the files to models/<name>/ instead of one "
                      "models/<name>/model.tar.gz")
    mode.add_argument("--lora", action="store_true",
                      help="put LoRA files into the LoRA library (loras/)")
    parser.add_argument("--bucket", help="data bucket (default: EASEL_BUCKET, else the stack's "
                        "BucketName output)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing object with the same name")
    parser.add_argument("--part-size", type=int, default=64, metavar="MIB",
                        help="multipart part size in MiB (default 64, at least 5)")
    parser.add_argument("--jobs", type=int, default=4,
                        help="parts sent in parallel (default 4)")
    parser.add_argument("--compress-level", type=int, default=1, choices=range(10),
                        metavar="0-9", help="gzip level for model.tar.gz (default 1: weights "
                        "barely compress, so speed wins)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where resume state and converted files are kept "
                        "(default ~/.cache/easel/uploads)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_target_arguments(parser)
    return parser


class _ProgressReader:
    """Reads a file and reports the bytes read (what the tar stream has consumed)."""

    def __init__(self, handle: BinaryIO, advance: Callable[[int], None]) -> None:
        self.handle = handle
        self.advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.advance(len(data))
        return data


def _tar_info(entry: PlannedFile) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.arcname)
    info.size = entry.size
    info.mtime = entry.mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_model_tar_gz(plan: Plan, sink: Any, *, level: int,
                       advance: Callable[[int], None]) -> None:
    """Stream the plan as a deterministic tar.gz into `sink` (same input -> same bytes)."""
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=sink, compresslevel=level, mtime=0)
    with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in plan.files:
            with entry.source.open("rb") as handle:
                tar.addfile(_tar_info(entry), _ProgressReader(handle, advance))
    gz.close()


class Uploader:
    def __init__(self, s3: Any, *, bucket: str, state_dir: Path, part_size: int, jobs: int,
                 quiet: bool, say: Callable[[str], None]) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.state_dir = state_dir
        self.part_size = part_size
        self.jobs = jobs
        self.quiet = quiet
        self.say = say
        self.counts = PartCounts()

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                    disable=self.quiet, file=sys.stderr, mininterval=0.5, leave=True)

    def _exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def refuse_existing(self, keys: Sequence[str], state: StateFile, *, overwrite: bool) -> None:
        if overwrite or state.load():
            return
        for key in keys:
            if self._exists(key):
                raise ScriptError(
                    f"s3://{self.bucket}/{key} already exists: pass --overwrite to replace it, "
                    "or choose another --name"
                )

    def _run(self, upload: MultipartUpload, produce: Callable[[], None], key: str) -> None:
        try:
            produce()
            upload.complete()
        except (Exception, KeyboardInterrupt) as exc:
            upload.abandon()
            self.counts.sent += upload.counts.sent
            self.counts.skipped += upload.counts.skipped
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            raise UploadInterrupted(
                f"upload of s3://{self.bucket}/{key} stopped ({reason}) after "
                f"{upload.counts.total} part(s). Run the same command again to resume: only "
                "the missing parts are sent.",
                sent=upload.counts.sent, skipped=upload.counts.skipped,
            ) from None
        self.counts.sent += upload.counts.sent
        self.counts.skipped += upload.counts.skipped

    def upload_tar(self, plan: Plan, key: str, *, level: int, overwrite: bool) -> None:
        state = StateFile(self.state_dir, bucket=self.bucket, target=key)
        self.refuse_existing([key], state, overwrite=overwrite)
        fingerprint = plan.fingerprint("tar.gz", level, self.part_size)
        upload_id, existing = open_upload(
            self.s3, state, key=key, fingerprint=fingerprint, say=self.say,
            extra_args={"ContentType": "application/gzip"},
        )
        with self._bar(plan.total_bytes, "packing + uploading") as bar:
            upload = MultipartUpload(self.s3, bucket=self.bucket, key=key, upload_id=upload_id,
                                     jobs=self.jobs, existing=existing)
            writer = PartWriter(upload, self.part_size)

            def produce() -> None:
                write_model_tar_gz(plan, writer, level=level, advance=bar.update)
                writer.finish()

            self._run(upload, produce, key)
        state.delete()

    def upload_files(self, plan: Plan, prefix: str, *, overwrite: bool) -> list[str]:
        """Each planned file to `prefix + arcname`; returns the keys."""
        target = prefix if prefix.endswith("/") else prefix + "/"
        state = StateFile(self.state_dir, bucket=self.bucket, target=target)
        keys = [target + f.arcname for f in plan.files]
        self.refuse_existing(keys, state, overwrite=overwrite)
        fingerprint = plan.fingerprint("files", self.part_size)
        previous = state.load() or {}
        if previous.get("fingerprint") not in (None, fingerprint):
            self.say("the source changed since the interrupted upload: starting over")
            for key, upload_id in previous.get("uploads", {}).items():
                with contextlib.suppress(ClientError):
                    self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id)
            previous = {}
        done = set(previous.get("done", []))
        if not previous:
            state.save({"fingerprint": fingerprint, "uploads": {}, "done": []})
        with self._bar(plan.total_bytes, "uploading") as bar:
            for entry, key in zip(plan.files, keys, strict=True):
                if key in done:
                    bar.update(entry.size)
                    continue
                if entry.size <= self.part_size:
                    with entry.source.open("rb") as handle:
                        self.s3.put_object(Bucket=self.bucket, Key=key, Body=handle.read())
                    self.counts.sent += 1
                    bar.update(entry.size)
                else:
                    self._upload_large(entry, key, state, fingerprint, bar)
                mark_done(state, key, fingerprint=fingerprint)
        state.delete()
        return keys

    def _upload_large(self, entry: PlannedFile, key: str, state: StateFile, fingerprint: str,
                      bar: tqdm) -> None:
        upload_id, existing = open_upload(self.s3, state, key=key, fingerprint=fingerprint,
                                          say=self.say)
        upload = MultipartUpload(self.s3, bucket=self.bucket, key=key, upload_id=upload_id,
                                 jobs=self.jobs, existing=existing,
                                 on_part=lambda _n, size, _sent: bar.update(size))

        def produce() -> None:
            with entry.source.open("rb") as handle:
                while chunk := handle.read(self.part_size):
                    upload.add(chunk)

        self._run(upload, produce, key)


def write_manifest(s3: Any, bucket: str, model_uri: str, manifest: ModelManifest) -> str:
    """Put the manifest beside the model (after the model, so a manifest means a whole model);
    returns its key."""
    key = manifest_key(model_uri.removeprefix(f"s3://{bucket}/"))
    s3.put_object(Bucket=bucket, Key=key, Body=manifest.to_json().encode(),
                  ContentType="application/json")
    return key


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _resolve_bucket(args: argparse.Namespace) -> tuple[str, Any]:
    import os

    explicit = args.bucket or os.environ.get("EASEL_BUCKET")
    target = resolve_target(args)
    bucket = explicit or StackOutputs(target).require("BucketName")
    # Parts carry a CRC32 header that S3 checks; a SHA-256 of each payload on top (what boto3
    # adds over plain http, e.g. `make local`) is one more pass over every byte for nothing.
    # Over https boto3 already skips it when a checksum header is present.
    config = Config(s3={"payload_signing_enabled": False})
    s3 = target.session().client("s3", config=config)
    if is_loopback(s3.meta.endpoint_url):
        # The local S3 on this machine: no wire to corrupt the bytes, and the CRC32 would cost
        # a pass over every byte on each side (about a CPU-second per GB, of six); the local S3
        # still computes each part's MD5 (its ETag), as S3 does.
        s3 = target.session().client("s3", config=config.merge(
            Config(request_checksum_calculation="when_required")))
    return bucket, s3


def is_loopback(url: str) -> bool:
    """True when ``url`` names this machine (the local AWS of `make local`)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    if args.part_size * MIB < MIN_PART_SIZE:
        raise UsageError("--part-size: S3 parts must be at least 5 MiB")
    if not 1 <= args.jobs <= 32:
        raise UsageError("--jobs: use 1 to 32")
    state_dir = (args.state_dir or default_state_dir()).expanduser()
    converted_dir = state_dir / "converted"
    planner = Planner(converted_dir=converted_dir, say=_say)
    try:
        plan = planner.plan(args.path, name=args.name, lora=args.lora)
        manifest = None if args.lora else build_manifest(
            plan, layout="folder" if args.uncompressed else "archive")
    except ModelFileError as exc:
        raise ScriptError(str(exc)) from None
    for entry in plan.files:
        note = f", {entry.note}" if entry.note else ""
        _say(f"  {entry.arcname}  ({entry.size / MIB:.1f} MiB{note})")
    for note in plan.notes:
        _say(f"  note: {note}")

    bucket, s3 = _resolve_bucket(args)
    uploader = Uploader(s3, bucket=bucket, state_dir=state_dir, part_size=args.part_size * MIB,
                        jobs=args.jobs, quiet=args.quiet, say=_say)
    try:
        if args.lora:
            keys = uploader.upload_files(plan, LORAS_PREFIX, overwrite=args.overwrite)
            uris = [f"s3://{bucket}/{key}" for key in keys]
        elif args.uncompressed:
            prefix = f"{MODELS_PREFIX}{plan.name}/"
            uploader.upload_files(plan, prefix, overwrite=args.overwrite)
            uris = [f"s3://{bucket}/{prefix}"]
        else:
            key = f"{MODELS_PREFIX}{plan.name}/model.tar.gz"
            uploader.upload_tar(plan, key, level=args.compress_level, overwrite=args.overwrite)
            uris = [f"s3://{bucket}/{key}"]
    except UploadInterrupted as exc:
        raise ScriptError(str(exc)) from None
    if manifest is not None:
        written = write_manifest(s3, bucket, uris[0], manifest)
        families = ", ".join(c.label for c in manifest.checkpoints)
        _say(f"manifest s3://{bucket}/{written} ({families})")
    shutil.rmtree(converted_dir, ignore_errors=True)
    counts = uploader.counts
    _say(f"done: {counts.sent} part(s) sent"
         + (f", {counts.skipped} already in S3 from the interrupted run" if counts.skipped else ""))
    if args.lora:
        names = ", ".join(f"<lora:{Path(u).name.removesuffix('.safetensors')}:1>" for u in uris)
        _say(f"in the LoRA library now; use it in a prompt as {names}")
    else:
        _say("paste this S3 URI into the portal's deploy form:")
    for uri in uris:
        print(uri)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
