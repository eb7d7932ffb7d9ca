"""The checkpoint folder layout the trainer writes and the portal reads."""

from __future__ import annotations

from easel_contracts.checkpoints import (
    LORA_FILE,
    STATE_FILE,
    checkpoints_in,
    lora_key,
    parse_member,
)

PREFIX = "training/job/checkpoints/"


def test_a_checkpoint_member_names_its_step_and_file():
    assert parse_member("checkpoint-250/lora.safetensors") == (250, "lora.safetensors")


def test_other_files_of_the_folder_are_not_checkpoint_members():
    for relative in ("progress.json", "preview/step-4.png", ".tmp-checkpoint-4/state.json",
                     "checkpoint-x/state.json", "checkpoint-4/sub/state.json", "checkpoint-4/",
                     "checkpoint-٣/state.json"):
        assert parse_member(relative) is None, relative


def test_checkpoints_are_listed_oldest_first_with_their_files():
    keys = [PREFIX + k for k in ("checkpoint-500/state.json", "checkpoint-250/state.json",
                                 "checkpoint-250/lora.safetensors", "progress.json")]
    found = checkpoints_in(keys, PREFIX)
    assert [c.step for c in found] == [250, 500]
    assert found[0].has_lora and not found[1].has_lora
    assert found[1].resumable


def test_a_lora_without_the_state_file_is_not_counted_yet():
    (only,) = checkpoints_in([PREFIX + "checkpoint-3/" + LORA_FILE], PREFIX)
    assert not only.has_lora and not only.resumable
    assert STATE_FILE not in only.files


def test_the_lora_key_lies_in_the_checkpoint_folder():
    assert lora_key(PREFIX, 7) == PREFIX + "checkpoint-7/lora.safetensors"
