"""A flow's DAG drawn as SVG: one column per dependency depth (a flowlet sits one column right of
its deepest dependency), a box per flowlet naming it and its module, an arrow per dependency.

Pure, and built like ``timeline_svg`` (with its ``element``): names and modules go into the tree
as text and are escaped when it is written, never pasted into markup.
"""

from __future__ import annotations

import graphlib
import xml.etree.ElementTree as ET

from flow8_streams.audit.timeline_svg import INK, WAIT, clip, element
from flow8_streams.domain.flow import FlowDefinition

NODE_WIDTH = 180
NODE_HEIGHT = 40
COLUMN_GAP = 56
ROW_GAP = 14
MARGIN = 10
MAX_NODES = 400  # flowlets drawn; the rest are counted in a note under the drawing
MAX_NAME = 24  # characters of a flowlet name in its box
MAX_MODULE = 26
FILL, DEFERRED_FILL = "#eef4fb", "#fff4e0"


def layers(flow: FlowDefinition) -> list[list[str]]:
    """The flowlets by depth (roots first), each layer in the flow's own order."""
    depth: dict[str, int] = {}
    for name in graphlib.TopologicalSorter({f.name: f.depends_on for f in flow.flowlets}).static_order():
        depth[name] = 1 + max((depth[d] for d in flow.by_name[name].depends_on), default=-1)
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for f in flow.flowlets:
        out[depth[f.name]].append(f.name)
    return out


def render(flow: FlowDefinition, *, max_nodes: int = MAX_NODES) -> ET.Element:
    """The ``<svg>`` of ``flow``'s DAG (no XML namespace: add ``xmlns`` to serve it alone)."""
    drawn: list[list[str]] = []
    left = max_nodes
    for layer in layers(flow):
        if left <= 0:
            break
        drawn.append(layer[:left])
        left -= len(drawn[-1])
    hidden = len(flow.flowlets) - sum(map(len, drawn))
    tallest = max(map(len, drawn))
    width = MARGIN * 2 + len(drawn) * NODE_WIDTH + (len(drawn) - 1) * COLUMN_GAP
    height = MARGIN * 2 + tallest * NODE_HEIGHT + (tallest - 1) * ROW_GAP + (20 if hidden else 0)
    svg = ET.Element(
        "svg",
        {
            "class": "dag",
            "viewBox": f"0 0 {width} {height}",
            "width": str(width),
            "height": str(height),
            "role": "img",
            "font-family": "system-ui, sans-serif",
            "font-size": "12",
            "data-flow": flow.name,
            "data-version": str(flow.version),
        },
    )
    element(svg, "title", f"DAG of flow {flow.name} v{flow.version}: {len(flow.flowlets)} flowlets")
    defs = element(svg, "defs")
    marker = element(
        defs, "marker", id="flow8-arrow", viewBox="0 0 10 10", refX=10, refY=5, markerWidth=7, markerHeight=7
    )
    marker.set("orient", "auto-start-reverse")
    element(marker, "path", d="M 0 0 L 10 5 L 0 10 z", fill=WAIT)
    where: dict[str, tuple[float, float]] = {}  # flowlet -> its box's top-left corner
    for col, layer in enumerate(drawn):
        for row, name in enumerate(layer):
            where[name] = (MARGIN + col * (NODE_WIDTH + COLUMN_GAP), MARGIN + row * (NODE_HEIGHT + ROW_GAP))
    edges = element(svg, "g", class_="edges")
    for f in flow.flowlets:
        for dep in f.depends_on:
            if f.name in where and dep in where:
                _edge(edges, dep, f.name, where[dep], where[f.name])
    nodes = element(svg, "g", class_="nodes")
    for name, (x, y) in where.items():
        _node(nodes, flow, name, x, y)
    if hidden:
        element(svg, "text", f"… {hidden} more flowlets not drawn", x=MARGIN, y=height - 6, fill=INK, class_="more")
    return svg


def _edge(g: ET.Element, source: str, target: str, a: tuple[float, float], b: tuple[float, float]) -> None:
    x1, y1 = a[0] + NODE_WIDTH, a[1] + NODE_HEIGHT / 2
    x2, y2 = b[0], b[1] + NODE_HEIGHT / 2
    bend = (x2 - x1) / 2
    path = element(
        g,
        "path",
        class_="edge",
        d=f"M {x1} {y1} C {x1 + bend} {y1}, {x2 - bend} {y2}, {x2} {y2}",
        fill="none",
        stroke=WAIT,
        stroke_width=1.5,
        data_from=source,
        data_to=target,
    )
    path.set("marker-end", "url(#flow8-arrow)")
    element(path, "title", f"{source} → {target}")


def _node(g: ET.Element, flow: FlowDefinition, name: str, x: float, y: float) -> None:
    f = flow.by_name[name]
    deferred = f.defer_after_ms is not None
    classes = "node deferred" if deferred else "node"
    node = element(g, "g", class_=classes, data_flowlet=name, data_module=f.module_ref)
    about = f"{name}: module {f.module_ref}"
    if f.depends_on:
        about += f"; after {', '.join(f.depends_on)}"
    if f.retry.max_attempts > 1:
        about += f"; up to {f.retry.max_attempts} attempts"
    if deferred:
        about += f"; deferred {f.defer_after_ms} ms onto a channel"
    element(node, "title", clip(about))
    box = element(node, "rect", x=x, y=y, width=NODE_WIDTH, height=NODE_HEIGHT, rx=5, stroke=INK)
    box.set("fill", DEFERRED_FILL if deferred else FILL)
    element(node, "text", clip(name, MAX_NAME), x=x + 8, y=y + 16, fill=INK, font_weight="bold", class_="name")
    element(node, "text", clip(f.module_ref, MAX_MODULE), x=x + 8, y=y + 32, fill=WAIT, class_="module")


__all__ = ["layers", "render"]
