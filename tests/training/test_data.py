"""Concept images, captions in prompts, buckets/crops/flips and the batch plan."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from easel_contracts.hyperparameters import HyperParameters
from easel_training.dataset import build_concept_data
from easel_training.errors import TrainingInputError
from easel_training.geometry import (
    make_buckets,
    nearest_bucket,
    place_image,
    resize_and_center_crop,
)
from easel_training.images import load_image_records, open_rgb
from easel_training.plan import BatchPlan
from easel_training.prompts import build_prompt, strip_filewords

from .conftest import draw_concept


def test_filewords_is_replaced_by_the_caption():
    assert build_prompt("photo of sks dog, [filewords]", "on a beach") == \
        "photo of sks dog, on a beach"


def test_filewords_without_caption_leaves_a_tidy_prompt():
    assert build_prompt("photo of sks dog, [filewords], 4k", None) == "photo of sks dog, 4k"


def test_caption_is_appended_without_filewords():
    assert build_prompt("photo of sks dog", "sitting") == "photo of sks dog, sitting"
    assert build_prompt("photo of sks dog", None) == "photo of sks dog"


def test_preview_prompt_drops_filewords():
    assert strip_filewords("[filewords] sks dog") == "sks dog"


def test_captions_are_read_from_same_name_txt(tmp_path):
    draw_concept(tmp_path / "a.png", size=(40, 40), seed=1)
    draw_concept(tmp_path / "b.jpg", size=(40, 40), seed=2)
    (tmp_path / "a.txt").write_text("  red   ball\n", encoding="utf-8")
    records = load_image_records(tmp_path, channel="concepts", min_side=8)
    by_name = {r.path.name: r for r in records}
    assert by_name["a.png"].caption == "red ball"
    assert by_name["b.jpg"].caption is None
    off = load_image_records(tmp_path, channel="concepts", min_side=8, use_captions=False)
    assert all(r.caption is None for r in off)


def test_captions_reach_the_training_prompts(tmp_path):
    draw_concept(tmp_path / "a.png", size=(64, 64), seed=1)
    draw_concept(tmp_path / "b.png", size=(64, 64), seed=2)
    (tmp_path / "a.txt").write_text("wearing a hat", encoding="utf-8")
    hp = HyperParameters.from_strings({"instance_prompt": "sks dog [filewords]"})
    data = build_concept_data(hp=hp, records=load_image_records(tmp_path, channel="concepts"),
                              class_records=[], resolution=64)
    assert data.image_prompts == ["sks dog wearing a hat", "sks dog"]
    assert sorted(data.prompts) == ["sks dog", "sks dog wearing a hat"]


def test_hidden_files_and_other_suffixes_are_ignored(tmp_path):
    draw_concept(tmp_path / "a.png", size=(32, 32), seed=1)
    (tmp_path / "notes.md").write_text("hello")
    (tmp_path / ".hidden").mkdir()
    draw_concept(tmp_path / ".hidden" / "x.png", size=(32, 32), seed=2)
    assert [r.path.name for r in load_image_records(tmp_path, channel="concepts")] == ["a.png"]


def test_transparency_becomes_white(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert open_rgb(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    image.save(tmp_path / "r.jpg", exif=exif)
    assert open_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_missing_and_empty_channels_raise(tmp_path):
    with pytest.raises(TrainingInputError, match="'concepts' is missing"):
        load_image_records(tmp_path / "nope", channel="concepts")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingInputError, match="'concepts' has no images"):
        load_image_records(tmp_path / "empty", channel="concepts")


def test_optional_channel_may_be_absent(tmp_path):
    assert load_image_records(tmp_path / "nope", channel="class", required=False) == []


def test_buckets_keep_area_and_aspect_limits():
    buckets = make_buckets(512)
    assert (512, 512) in buckets
    for height, width in buckets:
        assert height % 64 == 0 and width % 64 == 0
        assert height * width <= 512 * 512
        assert max(height / width, width / height) <= 2.0
    assert nearest_bucket(1600, 900, buckets)[1] > nearest_bucket(1600, 900, buckets)[0]
    assert nearest_bucket(900, 1600, buckets)[0] > nearest_bucket(900, 1600, buckets)[1]


def test_placements_for_crop_modes():
    centered = place_image(100, 60, resolution=48, bucketing=False, center_crop=True)
    assert centered.encode_hw == centered.target_hw == (48, 48)
    randomized = place_image(100, 60, resolution=48, bucketing=False, center_crop=False)
    assert randomized.target_hw == (48, 48)
    assert randomized.encode_hw[0] == 48 and randomized.encode_hw[1] > 48
    assert randomized.encode_hw[1] % 8 == 0
    bucketed = place_image(100, 60, resolution=48, bucketing=True, center_crop=True)
    assert bucketed.encode_hw == bucketed.target_hw and bucketed.target_hw[1] > bucketed.target_hw[0]


def test_center_crop_takes_the_middle():
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    for x in range(10, 20):
        for y in range(10):
            image.putpixel((x, y), (255, 0, 0))
    cropped = resize_and_center_crop(image, (10, 10))
    assert cropped.size == (10, 10)
    assert cropped.getpixel((5, 5)) == (255, 0, 0)


def test_plan_is_a_pure_function_of_seed_and_step():
    plan = BatchPlan([[0, 1, 2, 3, 4]], batch_size=2, world_size=1, seed=7)
    again = BatchPlan([[0, 1, 2, 3, 4]], batch_size=2, world_size=1, seed=7)
    first = [plan.slots(step=s, micro_step=0, accumulation=1, rank=0) for s in range(10)]
    assert first == [again.slots(step=s, micro_step=0, accumulation=1, rank=0)
                     for s in reversed(range(10))][::-1]
    other = BatchPlan([[0, 1, 2, 3, 4]], batch_size=2, world_size=1, seed=8)
    assert first != [other.slots(step=s, micro_step=0, accumulation=1, rank=0)
                     for s in range(10)]


def test_plan_covers_every_image_each_epoch():
    plan = BatchPlan([[0, 1, 2, 3, 4]], batch_size=2, world_size=1, seed=1)
    seen = [slot.image_index for step in range(plan.batches_per_epoch)
            for slot in plan.slots(step=step, micro_step=0, accumulation=1, rank=0)]
    assert set(seen) == {0, 1, 2, 3, 4}


def test_processes_split_the_single_process_batch():
    single = BatchPlan([[0, 1, 2, 3]], batch_size=2, world_size=1, seed=3)
    pair = BatchPlan([[0, 1, 2, 3]], batch_size=1, world_size=2, seed=3)
    for step in range(6):
        joined = (pair.slots(step=step, micro_step=0, accumulation=1, rank=0)
                  + pair.slots(step=step, micro_step=0, accumulation=1, rank=1))
        assert joined == single.slots(step=step, micro_step=0, accumulation=1, rank=0)


def test_batches_never_mix_buckets():
    plan = BatchPlan([[0, 1, 2], [3, 4]], batch_size=2, world_size=1, seed=0)
    for step in range(10):
        indices = {s.image_index for s in plan.slots(step=step, micro_step=0, accumulation=1,
                                                     rank=0)}
        assert indices <= {0, 1, 2} or indices <= {3, 4}


def test_flip_uses_the_mirrored_image(tmp_path):
    from easel_training.dataset import _pixels

    draw_concept(tmp_path / "a.png", size=(16, 16), seed=3)
    record = load_image_records(tmp_path, channel="concepts")[0]
    plain = _pixels(record, False, (16, 16))
    mirrored = _pixels(record, True, (16, 16))
    assert torch.equal(plain.flip(-1), mirrored)
    assert not torch.equal(plain, mirrored)
