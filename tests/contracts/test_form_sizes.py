"""The sizes the Generate form offers per family (which the server warms up)."""

from __future__ import annotations

import pytest

from easel_contracts.families import FAMILIES, ModelFamily
from easel_contracts.form_sizes import offered_sizes


@pytest.mark.parametrize("family", list(ModelFamily))
def test_the_native_square_comes_first(family) -> None:
    side = FAMILIES[family].resolution
    assert offered_sizes(family)[0] == (side, side)


@pytest.mark.parametrize("family", list(ModelFamily))
def test_every_offered_side_is_a_multiple_of_64(family) -> None:
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in offered_sizes(family))


def test_sd15_is_offered_square_portrait_and_landscape() -> None:
    assert offered_sizes("sd1") == ((512, 512), (512, 768), (768, 512))
