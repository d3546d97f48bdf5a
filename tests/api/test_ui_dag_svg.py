"""``audit.dag_svg``, pure: flowlets layered by dependency depth, every arrow pointing right, a box
per flowlet with its module as escaped text, and a bound on what is drawn."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from flow8_streams.audit import dag_svg
from flow8_streams.domain.flow import FlowDefinition


def flow(*flowlets: tuple[str, list[str]], module: str = "echo") -> FlowDefinition:
    return FlowDefinition.model_validate(
        {"name": "f", "flowlets": [{"name": n, "module_ref": module, "depends_on": d} for n, d in flowlets]}
    )


def boxes(svg: ET.Element) -> dict[str, float]:
    """Each drawn flowlet's column (its box's x)."""
    out = {}
    for g in svg.iter("g"):
        if "node" in (g.get("class") or "").split():
            rect = g.find("rect")
            assert rect is not None
            out[g.get("data-flowlet") or ""] = float(rect.get("x") or 0)
    return out


def test_layers_put_a_flowlet_one_past_its_deepest_dependency() -> None:
    diamond = flow(("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c", "a"]), ("e", []))
    assert dag_svg.layers(diamond) == [["a", "e"], ["b", "c"], ["d"]]
    listed_late = flow(("late", ["early"]), ("early", []))
    assert dag_svg.layers(listed_late) == [["early"], ["late"]]


def test_render_draws_a_box_per_flowlet_and_an_arrow_per_dependency() -> None:
    svg = dag_svg.render(flow(("a", []), ("b", ["a"]), ("c", ["a", "b"])))
    columns = boxes(svg)
    assert columns["a"] < columns["b"] < columns["c"]
    edges = [(p.get("data-from"), p.get("data-to")) for p in svg.iter("path") if p.get("class") == "edge"]
    assert sorted(edges) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert all(p.get("marker-end") == "url(#flow8-arrow)" for p in svg.iter("path") if p.get("class") == "edge")
    assert svg.find("defs/marker[@id='flow8-arrow']") is not None


def test_a_module_name_is_text_whatever_it_holds() -> None:
    hostile = "<script>alert(1)</script>&amp;"
    written = ET.tostring(dag_svg.render(flow(("a", []), module=hostile)), encoding="unicode")
    assert "<script>" not in written
    back = ET.fromstring(written)
    (module,) = [t for t in back.iter("text") if t.get("class") == "module"]
    assert module.text == hostile[: dag_svg.MAX_MODULE - 1] + "…"
    assert back.find("g/g[@data-flowlet='a']").get("data-module") == hostile  # type: ignore[union-attr]


def test_a_large_flow_draws_at_most_max_nodes_and_counts_the_rest() -> None:
    chain = flow(*((f"n{i}", [f"n{i - 1}"] if i else []) for i in range(12)))
    svg = dag_svg.render(chain, max_nodes=5)
    assert list(boxes(svg)) == [f"n{i}" for i in range(5)]
    assert len([p for p in svg.iter("path") if p.get("class") == "edge"]) == 4
    (more,) = [t for t in svg.iter("text") if t.get("class") == "more"]
    assert more.text == "… 7 more flowlets not drawn"


@st.composite
def dags(draw: st.DrawFn) -> FlowDefinition:
    n = draw(st.integers(1, 14))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)]
    return flow(*((f"f{i}", [f"f{j}" for j in deps[i]]) for i in range(n)))


@given(dags())
def test_every_arrow_points_right_and_every_box_is_inside_the_drawing(dag: FlowDefinition) -> None:
    svg = dag_svg.render(dag)
    columns = boxes(svg)
    assert set(columns) == {f.name for f in dag.flowlets}
    for f in dag.flowlets:
        assert all(columns[d] < columns[f.name] for d in f.depends_on)
    width = float(svg.get("width") or 0)
    assert all(x >= 0 and x + dag_svg.NODE_WIDTH <= width for x in columns.values())
