// #/flows: the company's flows and their versions. #/flows/NAME: a version's DAG (the server's
// SVG, layered by dependency depth) and its flowlets with their modules.

import { call, query } from "./api.js";
import { failed } from "./live.js";
import { h, importSvg } from "./dom.js";

export function flowsView(main, { signal }) {
  const body = h("tbody");
  const problem = h("div");
  const more = h("button", { type: "button", id: "more-flows", hidden: true }, "More");
  main.append(
    h("h1", {}, "Flows"),
    problem,
    h("table", { id: "flows" }, h("thead", {}, h("tr", {}, h("th", {}, "Flow"), h("th", {}, "Versions"))), body),
    h("p", { class: "pager" }, more),
  );
  document.title = "Flows · flow8";
  let cursor = null;
  const load = async () => {
    try {
      const page = await call(`/v1/flows${query({ cursor })}`, { signal });
      body.append(
        ...page.items.map((f) =>
          h(
            "tr",
            { "data-flow": f.name },
            h("td", {}, h("a", { href: `#/flows/${encodeURIComponent(f.name)}` }, f.name)),
            h("td", {}, f.versions.map((v, i) => [i ? ", " : "",
              h("a", { href: `#/flows/${encodeURIComponent(f.name)}${query({ version: v })}` }, `v${v}`)])),
          ),
        ),
      );
      if (!cursor && !page.items.length) body.append(h("tr", {}, h("td", { colspan: 2, class: "muted" }, "No flows.")));
      cursor = page.next_cursor;
      more.hidden = !cursor;
    } catch (error) {
      failed(error, problem);
    }
  };
  more.addEventListener("click", load);
  load();
}

function flowletRows(flow) {
  return flow.flowlets.map((f) =>
    h(
      "tr",
      { "data-flowlet": f.name },
      h("td", {}, f.name),
      h("td", {}, h("code", {}, f.module_ref)),
      h("td", {}, (f.depends_on || []).join(", ")),
      h("td", { class: "num" }, String((f.retry && f.retry.max_attempts) || 1)),
      h("td", {}, f.defer_after_ms === undefined || f.defer_after_ms === null ? "" : `${f.defer_after_ms} ms`),
    ),
  );
}

export async function flowView(main, { args: [name], params, signal }) {
  const version = params.get("version");
  const problem = h("div");
  const picker = h("select", { id: "flow-version" });
  const chart = h("div", { id: "dag", class: "chart" });
  const description = h("p", { id: "flow-description", class: "muted" });
  const body = h("tbody");
  main.append(
    h("p", {}, h("a", { href: "#/flows" }, "← Flows")),
    h("h1", {}, "Flow ", h("span", { class: "id" }, name)),
    description,
    h("label", {}, "Version ", picker),
    problem,
    h("h2", {}, "DAG"),
    chart,
    h("h2", {}, "Flowlets"),
    h("table", { id: "flow-flowlets" },
      h("thead", {}, h("tr", {}, ["Flowlet", "Module", "After", "Attempts", "Deferred"].map((c) => h("th", {}, c)))),
      body),
  );
  document.title = `Flow ${name} · flow8`;
  picker.addEventListener("change", () => {
    location.hash = `#/flows/${encodeURIComponent(name)}${query({ version: picker.value })}`;
  });
  const path = `/v1/flows/${encodeURIComponent(name)}`;
  try {
    const [versions, flow, svg] = await Promise.all([
      call(`${path}/versions`, { signal }),
      call(`${path}${query({ version })}`, { signal }),
      call(`${path}/dag${query({ version })}`, { as: "text", signal }),
    ]);
    picker.replaceChildren(
      ...versions.versions.map((v) => h("option", { value: v, selected: v === flow.version }, `v${v}`)),
    );
    chart.replaceChildren(importSvg(svg));
    description.textContent = flow.description || "";
    body.replaceChildren(...flowletRows(flow));
  } catch (error) {
    failed(error, problem);
  }
}
