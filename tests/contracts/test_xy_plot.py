"""The X/Y plot contract: axes parsed from a comma list, typed, bounded, and expanded into one
txt2img request a cell."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from easel_contracts.invocations import Lora, Sampler, Txt2ImgRequest
from easel_contracts.xy_plot import (
    MAX_AXIS_VALUES,
    MAX_OFFERED_NAMES,
    NotServed,
    PlotError,
    PlottedTxt2Img,
    XYAxis,
    XYPlot,
    failed_cell,
    plot_requests,
)


def _plot(x: tuple[str, object], y: tuple[str, object]) -> XYPlot:
    return XYPlot.model_validate({"x": {"type": x[0], "values": x[1]},
                                  "y": {"type": y[0], "values": y[1]}})


def _message(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return exc.value.errors()[0]["msg"]


def test_axis_values_come_from_a_comma_list_typed_by_the_setting() -> None:
    assert XYAxis(type="cfg_scale", values=" 3, 7.5 ,11").values == [3.0, 7.5, 11.0]
    assert XYAxis(type="steps", values="10,20").values == [10, 20]
    assert XYAxis(type="sampler", values="Euler a, DPM++ 2M").values == ["Euler a", "DPM++ 2M"]


def test_a_value_that_is_not_a_number_is_named() -> None:
    with pytest.raises(ValidationError) as exc:
        XYAxis(type="steps", values="10, lots")
    assert "Steps value 'lots' is not a whole number" in _message(exc)


def test_an_empty_axis_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        XYAxis(type="seed", values=" , ")
    assert "at least one value" in _message(exc)


def test_an_axis_has_at_most_8_values() -> None:
    with pytest.raises(ValidationError) as exc:
        XYAxis(type="seed", values=",".join(str(n) for n in range(MAX_AXIS_VALUES + 1)))
    assert "at most 8 an axis" in _message(exc)


def test_a_plot_has_at_most_36_cells() -> None:
    with pytest.raises(ValidationError) as exc:
        _plot(("seed", "1,2,3,4,5,6,7"), ("steps", "1,2,3,4,5,6"))
    assert "7 x 6 = 42 images; at most 36" in _message(exc)


def test_both_axes_varying_one_setting_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        _plot(("steps", "1,2"), ("steps", "3"))
    assert "pick two different settings" in _message(exc)


def test_an_unknown_axis_type_is_refused() -> None:
    with pytest.raises(ValidationError):
        XYAxis(type="denoise", values="0.5")


def test_cells_run_row_by_row_with_x_inner() -> None:
    cells = plot_requests(Txt2ImgRequest(prompt="p", seed=5),
                          _plot(("cfg_scale", "3,9"), ("steps", "10,20")))
    assert [(cell.steps, cell.cfg_scale) for cell in cells] == [
        (10, 3.0), (10, 9.0), (20, 3.0), (20, 9.0)]
    assert {cell.seed for cell in cells} == {5}


def test_a_random_seed_is_picked_once_for_every_cell() -> None:
    cells = plot_requests(Txt2ImgRequest(prompt="p", seed=-1),
                          _plot(("cfg_scale", "3,9"), ("sampler", "Euler,DDIM")))
    seeds = {cell.seed for cell in cells}
    assert len(seeds) == 1 and seeds != {-1}


def test_a_lora_weight_axis_sets_the_first_lora_tags_weight() -> None:
    cells = plot_requests(Txt2ImgRequest(prompt="a cat <lora:ink:1> <lora:other:0.3>", seed=1),
                          _plot(("lora_weight", "0, 0.5"), ("seed", "1")))
    assert [cell.prompt for cell in cells] == ["a cat <lora:ink:0> <lora:other:0.3>",
                                               "a cat <lora:ink:0.5> <lora:other:0.3>"]


def test_a_lora_weight_axis_without_a_lora_tag_says_what_to_add() -> None:
    with pytest.raises(PlotError, match="needs a <lora:name:weight> tag in the prompt"):
        plot_requests(Txt2ImgRequest(prompt="a cat"),
                      _plot(("lora_weight", "0.5"), ("seed", "1")))


def test_a_value_beyond_the_invocation_bounds_names_its_axis() -> None:
    with pytest.raises(PlotError) as exc:
        plot_requests(Txt2ImgRequest(prompt="p"), _plot(("seed", "1"), ("steps", "20, 500")))
    assert exc.value.field == "xy_plot.y"
    assert "Steps: 500 is out of bounds" in str(exc.value)


def test_a_plot_with_a_batch_is_refused() -> None:
    with pytest.raises(PlotError, match="set batch_size and n_iter to 1"):
        plot_requests(Txt2ImgRequest(prompt="p", n_iter=2),
                      _plot(("seed", "1"), ("steps", "2")))


def test_the_portal_body_drops_the_plot_for_the_invocation() -> None:
    body = PlottedTxt2Img.model_validate({"prompt": "p", "steps": 3, "xy_plot": {
        "x": {"type": "seed", "values": "1,2"}, "y": {"type": "steps", "values": [2, 3]}}})
    assert body.xy_plot is not None and body.xy_plot.columns == 2
    assert body.generation() == Txt2ImgRequest(prompt="p", steps=3)


def test_a1111_script_form_is_refused_with_what_to_send() -> None:
    with pytest.raises(ValidationError) as exc:
        PlottedTxt2Img.model_validate({"prompt": "p", "script_name": "x/y/z plot",
                                       "script_args": [1, "3,7"]})
    assert "for an X/Y plot send xy_plot" in _message(exc)


FLOW_SAMPLERS = [Sampler(name="Euler", aliases=["k_euler"], options={}),
                 Sampler(name="Heun", aliases=["k_heun"], options={})]


def test_a_sampler_the_endpoint_lacks_names_its_axis_and_what_the_endpoint_serves() -> None:
    with pytest.raises(NotServed) as exc:
        plot_requests(Txt2ImgRequest(prompt="p"),
                      _plot(("seed", "1"), ("sampler", "Euler, DPM++ 2M Karras")),
                      samplers=FLOW_SAMPLERS)
    assert exc.value.field == "xy_plot.y"
    assert str(exc.value) == ("xy_plot.y: Sampler 'DPM++ 2M Karras' is not served by this "
                              "endpoint; it serves: Euler, Heun")


def test_a_sampler_a_named_model_lacks_names_that_model() -> None:
    request = Txt2ImgRequest(prompt="p",
                             override_settings={"sd_model_checkpoint": "flux.safetensors [ab12]"})
    with pytest.raises(NotServed, match="is not served by this endpoint for model "
                                        "'flux.safetensors'; it serves: Euler, Heun"):
        plot_requests(request, _plot(("sampler", "DPM++ 2M Karras"), ("seed", "1")),
                      samplers=FLOW_SAMPLERS)


def test_a_sampler_named_by_its_alias_is_served() -> None:
    cells = plot_requests(Txt2ImgRequest(prompt="p"),
                          _plot(("sampler", "k_euler, Heun"), ("seed", "1")),
                          samplers=FLOW_SAMPLERS)
    assert [cell.sampler_name for cell in cells] == ["k_euler", "Heun"]


def test_samplers_not_given_are_not_checked() -> None:
    cells = plot_requests(Txt2ImgRequest(prompt="p"),
                          _plot(("sampler", "DPM++ 2M Karras"), ("seed", "1")))
    assert [cell.sampler_name for cell in cells] == ["DPM++ 2M Karras"]


def test_the_names_served_are_listed_up_to_the_bound() -> None:
    many = [Sampler(name=f"s{index}", aliases=[], options={}) for index in range(25)]
    with pytest.raises(NotServed) as exc:
        plot_requests(Txt2ImgRequest(prompt="p"), _plot(("sampler", "Euler"), ("seed", "1")),
                      samplers=many)
    listed = str(exc.value).split("it serves: ", 1)[1]
    assert listed.endswith(f"s{MAX_OFFERED_NAMES - 1} and 5 more")
    assert f"s{MAX_OFFERED_NAMES}," not in listed


def test_a_lora_weight_axis_whose_lora_the_endpoint_lacks_is_refused() -> None:
    with pytest.raises(NotServed) as exc:
        plot_requests(Txt2ImgRequest(prompt="a cat <lora:ink:1>"),
                      _plot(("lora_weight", "0.5, 1"), ("seed", "1")),
                      loras=[Lora(name="style", alias="style", path="Lora/style.safetensors")])
    assert exc.value.field == "xy_plot.x"
    assert "LoRA 'ink'" in str(exc.value) and str(exc.value).endswith("it serves: style")


def test_a_lora_weight_axis_on_an_endpoint_without_loras_says_it_serves_none() -> None:
    with pytest.raises(NotServed, match="it serves none"):
        plot_requests(Txt2ImgRequest(prompt="a cat <lora:ink:1>"),
                      _plot(("seed", "1"), ("lora_weight", "0.5")), loras=[])


def test_a_failed_cell_is_placed_by_its_axis_labels() -> None:
    plot = _plot(("sampler", "Euler, Heun, DDIM"), ("seed", "1, 2"))
    cell = failed_cell(plot, 4, "refused " * 100)
    assert (cell.index, cell.x, cell.y) == (4, "Sampler: Heun", "Seed: 2")
    assert len(cell.error) == 300
