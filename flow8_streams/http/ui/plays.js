// #/plays: the company's plays, newest first, filtered by status and flow, paged with the API's
// cursor, and refreshed every 2 s while the tab is visible.

import { call, query } from "./api.js";
import { failed, poll } from "./live.js";
import { age, badge, duration, h } from "./dom.js";

const STATUSES = ["", "running", "succeeded", "failed", "cancelled"];
const PAGE = 25;
const MAX_PAGE = 500; // the API's most

export function playsView(main, { params, signal }) {
  const status = params.get("status") || "";
  const flow = params.get("flow") || "";
  const limit = Math.min(MAX_PAGE, Math.max(1, Number.parseInt(params.get("limit"), 10) || PAGE));
  const cursors = [null]; // the cursor of each page seen, for "Newer"
  let page = 0;

  const statusSelect = h(
    "select",
    { name: "status", id: "filter-status" },
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s || "any status")),
  );
  const flowInput = h("input", {
    name: "flow",
    id: "filter-flow",
    value: flow,
    placeholder: "flow name",
    pattern: "[A-Za-z0-9_.\\-]{1,128}",
    maxlength: 128,
  });
  const filters = h(
    "form",
    { class: "filters", id: "plays-filters" },
    h("label", {}, "Status ", statusSelect),
    h("label", {}, "Flow ", flowInput),
    h("button", { type: "submit" }, "Filter"),
  );
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const limited = limit === PAGE ? undefined : limit;
    location.hash = `#/plays${query({ status: statusSelect.value, flow: flowInput.value.trim(), limit: limited })}`;
  });

  const body = h("tbody");
  const table = h(
    "table",
    { id: "plays" },
    h("thead", {}, h("tr", {}, ["Play", "Flow", "Status", "Started", "Duration"].map((c) => h("th", {}, c)))),
    body,
  );
  const newer = h("button", { type: "button", id: "newer", disabled: true }, "← Newer");
  const older = h("button", { type: "button", id: "older", disabled: true }, "Older →");
  const updated = h("span", { class: "muted", id: "plays-updated" });
  const pageNumber = h("span", { id: "plays-page" }); // set once a page has loaded
  const problem = h("div");
  main.append(h("h1", {}, "Plays"), filters, problem, table, h("p", { class: "pager" }, newer, pageNumber, older, updated));

  let latest = 0; // the newest load: an older answer (a poll crossing a page change) is dropped
  const load = async () => {
    const mine = ++latest;
    try {
      const found = await call(
        `/v1/plays${query({ status, flow, limit, cursor: cursors[page] })}`,
        { signal },
      );
      if (mine !== latest) return;
      const now = Date.now();
      body.replaceChildren(
        ...found.items.map((p) =>
          h(
            "tr",
            { "data-play": p.play_id, "data-status": p.status },
            h("td", {}, h("a", { href: `#/plays/${encodeURIComponent(p.play_id)}` }, p.play_id)),
            h("td", {}, h("a", { href: `#/flows/${encodeURIComponent(p.flow)}` }, p.flow), ` v${p.flow_version}`),
            h("td", {}, badge(p.status)),
            h("td", { title: p.started_at }, age(p.started_at, now)),
            h("td", {}, duration(p, now)),
          ),
        ),
      );
      if (!found.items.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No plays.")));
      cursors[page + 1] = found.next_cursor;
      older.disabled = !found.next_cursor;
      newer.disabled = page === 0;
      pageNumber.textContent = `page ${page + 1}`;
      updated.textContent = `updated ${new Date(now).toLocaleTimeString()}`;
      problem.replaceChildren();
    } catch (error) {
      failed(error, problem);
    }
  };
  older.addEventListener("click", () => {
    page += 1;
    load();
  });
  newer.addEventListener("click", () => {
    page = Math.max(0, page - 1);
    load();
  });
  document.title = "Plays · flow8";
  poll(load, signal);
}
