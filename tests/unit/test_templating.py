"""Input templating: ``${input.PATH}`` and ``${flowlets.NAME.output.PATH}``."""

from __future__ import annotations

from typing import Any

import pytest

from flow8_streams.domain.templating import Reference, TemplateError, parse_reference, references, render

PLAY_INPUT: dict[str, Any] = {
    "n": 5,
    "pi": 3.5,
    "flag": False,
    "name": "Zoë",
    "none": None,
    "obj": {"k": [1, 2], "s": "x"},
    "docs": [{"id": "d0"}, {"id": "d1"}, {"id": "d2"}],
    "matrix": [[1, 2], [3, 4]],
}
OUTPUTS: dict[str, Any] = {
    "fetch": {"body": {"rows": [10, 20, 30]}, "status": 200},
    "count": 7,
    "empty": None,
}


def r(template: Any) -> Any:
    return render(template, PLAY_INPUT, OUTPUTS)


# ------------------------------------------------------------------ whole-string references keep their type


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${input.n}", 5),
        ("${input.pi}", 3.5),
        ("${input.flag}", False),
        ("${input.none}", None),
        ("${input.obj}", {"k": [1, 2], "s": "x"}),
        ("${input.obj.k}", [1, 2]),
        ("${input.name}", "Zoë"),
        ("${input}", PLAY_INPUT),
        ("${flowlets.count.output}", 7),
        ("${flowlets.fetch.output}", {"body": {"rows": [10, 20, 30]}, "status": 200}),
        ("${flowlets.fetch.output.body.rows}", [10, 20, 30]),
        ("${flowlets.empty.output}", None),
        ("${ input.n }", 5),
    ],
)
def test_whole_string_reference_keeps_type(template: str, expected: Any) -> None:
    value = r(template)
    assert value == expected
    assert type(value) is type(expected)


def test_whole_string_reference_returns_the_value_not_a_string_of_it() -> None:
    assert r("${input.n}") != "5"
    assert r("${input.none}") is None


# ------------------------------------------------------------------ interpolation


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("n=${input.n}", "n=5"),
        ("${input.n} items", "5 items"),
        ("hello ${input.name}!", "hello Zoë!"),  # strings are not quoted, non-ASCII kept
        ("obj=${input.obj}", 'obj={"k":[1,2],"s":"x"}'),  # objects: compact JSON
        ("list=${input.obj.k}", "list=[1,2]"),
        ("none=${input.none}", "none=null"),
        ("flag=${input.flag}", "flag=false"),
        ("${input.n}${input.n}", "55"),  # two references are not one whole reference
        ("${input.docs.0.id}/${flowlets.fetch.output.status}", "d0/200"),
        ("rows ${flowlets.fetch.output.body.rows}", "rows [10,20,30]"),
    ],
)
def test_interpolation_inside_longer_strings(template: str, expected: str) -> None:
    assert r(template) == expected


@pytest.mark.parametrize("text", ["plain", "", "$input.n", "${", "price: $5", "{input.n}"])
def test_strings_without_references_are_unchanged(text: str) -> None:
    assert r(text) == text


@pytest.mark.parametrize("value", [1, 2.5, True, None])
def test_non_string_scalars_are_unchanged(value: Any) -> None:
    assert r(value) is value


# ------------------------------------------------------------------ paths: keys and list indexes


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${input.docs.0}", {"id": "d0"}),
        ("${input.docs.2.id}", "d2"),
        ("${input.docs.-1.id}", "d2"),
        ("${input.docs.-3.id}", "d0"),
        ("${input.matrix.1.0}", 3),
        ("${flowlets.fetch.output.body.rows.1}", 20),
    ],
)
def test_list_indexes(template: str, expected: Any) -> None:
    assert r(template) == expected


def test_digit_keys_of_objects_are_keys() -> None:
    assert render("${input.m.0}", {"m": {"0": "zero"}}, {}) == "zero"


# ------------------------------------------------------------------ nested templates


def test_nested_mappings_and_lists() -> None:
    template = {
        "doc": "${input.docs.1}",
        "meta": {"count": "${flowlets.count.output}", "label": "n=${input.n}", "literal": 3, "nothing": None},
        "list": ["${input.n}", ["${input.name}", {"rows": "${flowlets.fetch.output.body.rows}"}], False],
        "${input.n}": "keys are not templates",
    }
    assert r(template) == {
        "doc": {"id": "d1"},
        "meta": {"count": 7, "label": "n=5", "literal": 3, "nothing": None},
        "list": [5, ["Zoë", {"rows": [10, 20, 30]}], False],
        "${input.n}": "keys are not templates",
    }


def test_render_does_not_mutate_template_or_inputs() -> None:
    template = {"a": ["${input.obj}"]}
    before = {"a": ["${input.obj}"]}
    rendered = r(template)
    assert template == before
    assert rendered == {"a": [{"k": [1, 2], "s": "x"}]}


# ------------------------------------------------------------------ failures name the reference


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${input.missing}", "${input.missing} does not resolve: no 'missing' at (top)"),
        ("${input.obj.k.9}", "${input.obj.k.9} does not resolve: no '9' at obj.k"),
        ("${input.docs.3}", "${input.docs.3} does not resolve: no '3' at docs"),
        ("${input.docs.-4}", "${input.docs.-4} does not resolve: no '-4' at docs"),
        ("${input.docs.first}", "${input.docs.first} does not resolve: no 'first' at docs"),
        ("${input.n.x}", "${input.n.x} does not resolve: no 'x' at n"),
        ("${input.none.x}", "${input.none.x} does not resolve: no 'x' at none"),
        (
            "${flowlets.fetch.output.body.cols}",
            "${flowlets.fetch.output.body.cols} does not resolve: no 'cols' at body",
        ),
        ("a ${input.n} b ${input.gone}", "${input.gone} does not resolve: no 'gone' at (top)"),
        ({"deep": ["${input.obj.nope}"]}, "${input.obj.nope} does not resolve: no 'nope' at obj"),
    ],
)
def test_missing_path_names_the_reference(template: Any, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        r(template)
    assert str(info.value) == message


@pytest.mark.parametrize("key", ["--1", "²", "٣", "+1", "1_0", " 1"])
def test_odd_list_index_fails_cleanly(key: str) -> None:
    # must be a TemplateError (which the engine turns into a failed flowlet), never a bare ValueError
    with pytest.raises(TemplateError, match=r"does not resolve"):
        render("${input.docs." + key + "}", {"docs": [1, 2, 3]}, {})


@pytest.mark.parametrize("template", ["${flowlets.later.output}", "x ${flowlets.later.output.a}"])
def test_flowlet_without_output_fails(template: str) -> None:
    with pytest.raises(TemplateError) as info:
        r(template)
    assert "does not resolve: flowlet 'later' has no output" in str(info.value)
    assert "${flowlets.later.output" in str(info.value)


def test_malformed_reference_fails_at_render() -> None:
    with pytest.raises(TemplateError, match=r"\$\{flowlets\.fetch\} is not a reference"):
        r({"x": "${flowlets.fetch}"})


def test_template_error_is_a_value_error() -> None:
    assert issubclass(TemplateError, ValueError)


# ------------------------------------------------------------------ parsing references


def test_references_lists_every_reference_in_order() -> None:
    template = {"a": "${input.x.0}", "b": ["pre ${flowlets.f.output} mid ${flowlets.g.output.y.z}"], "c": 3}
    assert references(template) == [
        Reference("${input.x.0}", None, ("x", "0")),
        Reference("${flowlets.f.output}", "f", ()),
        Reference("${flowlets.g.output.y.z}", "g", ("y", "z")),
    ]


def test_references_of_a_template_without_any() -> None:
    assert references({"a": "plain", "b": [1, None, {"c": "$x"}]}) == []


@pytest.mark.parametrize(
    "body", ["flowlets.f", "flowlets..output", "flowlets.f.result", "output.f", "", "INPUT.x", "flowlets"]
)
def test_parse_reference_rejects_malformed(body: str) -> None:
    with pytest.raises(TemplateError, match="is not a reference"):
        parse_reference(body)


def test_parse_reference_input_root() -> None:
    assert parse_reference("input") == Reference("${input}", None, ())
