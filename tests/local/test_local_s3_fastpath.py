"""Large objects in the local S3: bodies kept as files, streamed, linked into the saved state."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from local.emulator import s3_state
from local.emulator.runner import BLOB_DIR_NAME, Emulator
from local.names import LocalNames

MIB = 1024 * 1024
SIZE = 64 * MIB
KEY = "models/big/model.safetensors"
# 8 MiB parts: a multipart upload of 8 parts, as boto3 sends it (with CRC32 checksums).
PARTS = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB)


def start_emulator(root: Path) -> Emulator:
    emulator = Emulator(data_dir=root / "data", run_dir=root / "run",
                        names=LocalNames("fastpath"), snapshot_interval=3600)
    emulator.start()
    return emulator


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("payload") / "big.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    emulator = start_emulator(tmp_path)
    try:
        yield emulator
    finally:
        emulator.stop()


def upload(emulator: Emulator, source: Path, key: str = KEY) -> None:
    emulator.client("s3").upload_file(str(source), emulator.names.bucket, key, Config=PARTS)


def located(emulator: Emulator, key: str = KEY) -> dict | None:
    return s3_state.EmulatorFiles(emulator.url).locate(emulator.names.bucket, key)


def test_a_multipart_object_is_kept_as_one_file_with_the_same_bytes(emulator, payload, tmp_path):
    upload(emulator, payload)

    where = located(emulator)
    assert where is not None, "the completed upload should be file-backed"
    blob = Path(where["path"])
    assert blob.is_relative_to(tmp_path / "data" / BLOB_DIR_NAME)
    assert blob.read_bytes() == payload.read_bytes()
    assert where["size"] == SIZE
    # S3's multipart ETag: MD5 of the part MD5s, then -<number of parts>
    assert where["etag"].strip('"').endswith("-8")
    # the part files are gone once the object is assembled
    assert not any((tmp_path / "data" / BLOB_DIR_NAME / "parts").rglob("*.*"))


def test_get_object_streams_the_bytes_back(emulator, payload, tmp_path):
    upload(emulator, payload)
    s3 = emulator.client("s3")

    target = tmp_path / "back.bin"
    s3.download_file(emulator.names.bucket, KEY, str(target))
    assert target.read_bytes() == payload.read_bytes()

    head = s3.head_object(Bucket=emulator.names.bucket, Key=KEY)
    assert head["ContentLength"] == SIZE
    assert head["ETag"] == located(emulator)["etag"]


def test_ranged_gets_answer_exactly_the_requested_bytes(emulator, payload):
    upload(emulator, payload)
    s3 = emulator.client("s3")
    data = payload.read_bytes()

    middle = s3.get_object(Bucket=emulator.names.bucket, Key=KEY, Range="bytes=1000-2999999")
    assert middle["ContentRange"] == f"bytes 1000-2999999/{SIZE}"
    assert middle["Body"].read() == data[1000:3000000]
    tail = s3.get_object(Bucket=emulator.names.bucket, Key=KEY, Range="bytes=-4096")
    assert tail["Body"].read() == data[-4096:]
    open_ended = s3.get_object(Bucket=emulator.names.bucket, Key=KEY,
                               Range=f"bytes={SIZE - 10}-")
    assert open_ended["Body"].read() == data[-10:]


def test_a_range_past_the_end_is_s3s_invalid_range(emulator, payload):
    upload(emulator, payload)
    with pytest.raises(ClientError) as error:
        emulator.client("s3").get_object(Bucket=emulator.names.bucket, Key=KEY,
                                         Range=f"bytes={SIZE + 5}-")
    assert error.value.response["Error"]["Code"] == "InvalidRange"


def test_completing_with_a_wrong_part_etag_is_s3s_invalid_part(emulator):
    s3 = emulator.client("s3")
    bucket = emulator.names.bucket
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=KEY, UploadId=upload_id, PartNumber=1,
                   Body=b"x" * (5 * MIB))
    with pytest.raises(ClientError) as error:
        s3.complete_multipart_upload(
            Bucket=bucket, Key=KEY, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}]})
    assert error.value.response["Error"]["Code"] == "InvalidPart"


def test_a_part_whose_crc32_does_not_match_is_refused(emulator):
    s3 = emulator.client("s3")
    bucket = emulator.names.bucket
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    with pytest.raises(ClientError) as error:
        s3.upload_part(Bucket=bucket, Key=KEY, UploadId=upload_id, PartNumber=1,
                       Body=b"x" * (5 * MIB), ChecksumCRC32="AAAAAA==")
    assert error.value.response["Error"]["Code"] in ("BadDigest", "InvalidRequest")


def test_deleting_the_object_removes_its_file(emulator, payload):
    upload(emulator, payload)
    blob = Path(located(emulator)["path"])
    emulator.client("s3").delete_object(Bucket=emulator.names.bucket, Key=KEY)
    assert not blob.exists()


def test_the_snapshot_links_the_file_instead_of_copying_it(emulator, payload, tmp_path):
    upload(emulator, payload)
    emulator.save()

    blob = Path(located(emulator)["path"])
    saved = tmp_path / "data" / "s3" / emulator.names.bucket / "objects" / KEY
    assert saved.read_bytes() == payload.read_bytes()
    assert os.path.samefile(saved, blob), "the saved state should share the emulator's file"


def test_the_snapshot_does_not_read_an_unchanged_large_object_again(emulator, payload, tmp_path):
    upload(emulator, payload)
    bucket_dir = tmp_path / "snapshot"
    files = s3_state.EmulatorFiles(emulator.url)
    s3 = emulator.client("s3")
    s3_state.snapshot_bucket(s3, emulator.names.bucket, bucket_dir, files)

    reads: list[str] = []

    class CountingFiles(s3_state.EmulatorFiles):
        def locate(self, bucket: str, key: str) -> dict | None:
            reads.append(key)
            return super().locate(bucket, key)

    class CountingS3:
        def __getattr__(self, name: str):  # noqa: ANN204 - delegate everything else
            return getattr(s3, name)

        def get_object(self, **kwargs):  # noqa: ANN003, ANN201
            reads.append(kwargs["Key"])
            return s3.get_object(**kwargs)

    s3.put_object(Bucket=emulator.names.bucket, Key="small.txt", Body=b"changed")
    s3_state.snapshot_bucket(CountingS3(), emulator.names.bucket, bucket_dir,
                             CountingFiles(emulator.url))
    assert reads == ["small.txt"]


def test_a_restart_hands_the_saved_file_back_without_a_copy(tmp_path, payload):
    first = start_emulator(tmp_path)
    try:
        upload(first, payload)
        etag = located(first)["etag"]
    finally:
        first.stop()

    second = start_emulator(tmp_path)
    try:
        where = located(second)
        assert where is not None, "the restarted emulator should serve the saved file"
        assert where["etag"] == etag, "the ETag should survive a restart (no re-upload)"
        saved = tmp_path / "data" / "s3" / second.names.bucket / "objects" / KEY
        assert os.path.samefile(saved, where["path"])
        body = second.client("s3").get_object(Bucket=second.names.bucket, Key=KEY)["Body"]
        assert body.read() == payload.read_bytes()
    finally:
        second.stop()


def test_a_failed_snapshot_round_is_one_line_without_a_traceback(emulator, caplog):
    def busy() -> None:
        raise TimeoutError("timed out")

    emulator._store.snapshot = busy  # type: ignore[union-attr]
    emulator._saved_generation = -2  # something "changed"
    emulator._snapshot_interval = 0.05
    with caplog.at_level(logging.WARNING, logger="local.emulator.runner"):
        emulator._stop_event.set()
        emulator._thread.join()  # stop the real loop, then run one round of it
        emulator._stop_event.clear()
        stopper = __import__("threading").Timer(0.2, emulator._stop_event.set)
        stopper.start()
        emulator._snapshot_loop()
    records = [r for r in caplog.records if "snapshot" in r.getMessage()]
    assert records, "the deferred snapshot should be reported"
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in records)
    emulator._store = None  # the busy stand-in cannot take the final snapshot


def test_a_streamed_get_answers_the_stored_headers_and_metadata(emulator, payload):
    s3 = emulator.client("s3")
    s3.upload_file(str(payload), emulator.names.bucket, KEY, Config=PARTS, ExtraArgs={
        "ContentType": "application/octet-stream", "ContentDisposition": "attachment",
        "Metadata": {"origin": "bench"}})
    assert located(emulator) is not None
    answer = s3.get_object(Bucket=emulator.names.bucket, Key=KEY, Range="bytes=0-9")
    assert answer["ContentType"] == "application/octet-stream"
    assert answer["ContentDisposition"] == "attachment"
    assert answer["Metadata"] == {"origin": "bench"}
