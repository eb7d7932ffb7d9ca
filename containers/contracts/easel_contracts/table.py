"""The portal's DynamoDB table: its key attributes, record kinds and their keys, defined once.

The table has generic string keys ``pk``/``sk`` and one global secondary index ``gsi1``
(``gsi1pk``/``gsi1sk``), so a new record kind needs no table change (CloudFormation adds at most
one GSI per update). Items with a ``ttl`` attribute (epoch seconds) expire.

| record | pk | sk | gsi1pk / gsi1sk |
| --- | --- | --- | --- |
| user | `user#<name>` | `profile` | `users` / name |
| API choices of a user | `user#<name>` | `prefs` | - |
| sign-in attempts of one client | `throttle#<name>` | `client#<address>` | - (expires by `ttl`) |
| deleted user name (never reused) | `user#<name>` | `tombstone` | - |
| revoked session | `revoked#<nonce>` | `session` | - (expires by `ttl`) |
| generated image | `image#<id>` | `meta` | `images` / `<created>#<id>` |
| generation job | `gen#<id>` | `meta` | `genrunning` / id while it runs (expires by `ttl`) |
| a user's generation slot (lease) | `user#<name>` | `genslot#<n>` | - |
| endpoint | `endpoint#<name>` | `meta` | `endpoints` / name |
| training job | `training#<name>` | `meta` | `training` / `<created>#<name>` |
| a user's image | `owner#<name>` | `image#<created>#<id>` | - (points at the image) |
| a user's training job | `owner#<name>` | `training#<created>#<name>` | - (points at the job) |
| owner of a library entry | `library#<key>` (`loras/<file>`, `models/<name>`) | `owner` | - |
| one-off migration done | `migration#<name>` | `done` | - |

The ``owner#`` items let a user's views (gallery, training jobs) query that user's records, newest
first, instead of filtering everyone's: each carries ``ref_pk``/``ref_sk``, the key of the record
it points at.
"""

from __future__ import annotations

from typing import Any, NamedTuple

PK = "pk"
SK = "sk"
GSI = "gsi1"
GSI_PK = "gsi1pk"
GSI_SK = "gsi1sk"
TTL = "ttl"
KEY_ATTRIBUTES = (PK, SK, GSI_PK, GSI_SK)

META = "meta"
USERS_INDEX = "users"
IMAGES_INDEX = "images"
ENDPOINTS_INDEX = "endpoints"
TRAINING_INDEX = "training"
# generation jobs while they run (a sparse index: a job leaves it when it ends), for the sweep
# that fails the jobs of a stopped portal task
RUNNING_GENERATION_INDEX = "genrunning"

REF_PK = "ref_pk"
REF_SK = "ref_sk"
OWNER_IMAGE = "image"
OWNER_TRAINING = "training"


class Key(NamedTuple):
    pk: str
    sk: str

    def item(self) -> dict[str, str]:
        return {PK: self.pk, SK: self.sk}


def _index(partition: str, sort: str) -> dict[str, str]:
    return {GSI_PK: partition, GSI_SK: sort}


# --- users and sessions

def user_key(username: str) -> Key:
    return Key(f"user#{username}", "profile")


def user_index(username: str) -> dict[str, str]:
    return _index(USERS_INDEX, username)


def user_prefs_key(username: str) -> Key:
    return Key(f"user#{username}", "prefs")


def login_attempts_key(username: str, client: str) -> Key:
    """Sign-in attempts for one user name from one client address (so a stranger's failures
    never lock the user out from their own address)."""
    return Key(f"throttle#{username}", f"client#{client}")


def user_tombstone_key(username: str) -> Key:
    """Written when a user is deleted: the name is never given to anyone again, so a new user
    never inherits the S3 keys (``outputs/<user>/``, ``concepts/<user>/``) that embed it."""
    return Key(f"user#{username}", "tombstone")


def revoked_session_key(nonce: str) -> Key:
    return Key(f"revoked#{nonce}", "session")


# --- generation

def image_key(image_id: str) -> Key:
    return Key(f"image#{image_id}", META)


def image_index(created: str, image_id: str) -> dict[str, str]:
    return _index(IMAGES_INDEX, f"{created}#{image_id}")


def generation_job_key(job_id: str) -> Key:
    return Key(f"gen#{job_id}", META)


def running_generation_index(job_id: str) -> dict[str, str]:
    return _index(RUNNING_GENERATION_INDEX, job_id)


def generation_slot_key(username: str, slot: int) -> Key:
    """One of a user's concurrent-generation slots, shared by every portal task: a job holds one
    (a lease its task renews) while it waits or runs."""
    return Key(f"user#{username}", f"genslot#{slot}")


# --- endpoints

def endpoint_key(endpoint_name: str) -> Key:
    return Key(f"endpoint#{endpoint_name}", META)


def endpoint_index(endpoint_name: str) -> dict[str, str]:
    return _index(ENDPOINTS_INDEX, endpoint_name)


# --- training jobs (the record's attributes: easel_contracts.records)

def training_job_key(job_name: str) -> Key:
    return Key(f"training#{job_name}", META)


def training_job_index(created: str, job_name: str) -> dict[str, str]:
    return _index(TRAINING_INDEX, f"{created}#{job_name}")


# --- per-owner items

def owner_partition(owner: str) -> str:
    return f"owner#{owner}"


def owner_sort_prefix(kind: str) -> str:
    return f"{kind}#"


def owner_key(owner: str, kind: str, created: str, name: str) -> Key:
    return Key(owner_partition(owner), f"{owner_sort_prefix(kind)}{created}#{name}")


def owner_item(owner: str, kind: str, created: str, name: str, ref: Key) -> dict[str, str]:
    """The item that lists record ``ref`` (an image, a training job) under its owner."""
    return {**owner_key(owner, kind, created, name).item(), REF_PK: ref.pk, REF_SK: ref.sk}


def owner_image_key(owner: str, created: str, image_id: str) -> Key:
    return owner_key(owner, OWNER_IMAGE, created, image_id)


def owner_image_item(owner: str, created: str, image_id: str) -> dict[str, str]:
    return owner_item(owner, OWNER_IMAGE, created, image_id, image_key(image_id))


def owner_training_item(owner: str, created: str, job_name: str) -> dict[str, str]:
    return owner_item(owner, OWNER_TRAINING, created, job_name, training_job_key(job_name))


def referenced_key(owner_item_: dict[str, Any]) -> Key:
    return Key(owner_item_[REF_PK], owner_item_[REF_SK])


# --- the shared library (loras/, models/)

def library_entry_key(entry: str) -> Key:
    """Who owns library entry `entry` (``loras/<file>`` or ``models/<name>``): only the owner or
    an administrator replaces or deletes it; entries uploaded by an administrator are shared."""
    return Key(f"library#{entry}", "owner")


def migration_key(name: str) -> Key:
    return Key(f"migration#{name}", "done")
