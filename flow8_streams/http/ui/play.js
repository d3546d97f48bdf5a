// #/plays/ID: a play's facts, its timeline (the server's SVG), input and output, flowlets, event
// log and audit verdict, and a cancel button. Refreshed every 2 s while it runs; once it has
// ended, read one last time with its verdict.

import { HttpError, call, query } from "./api.js";
import { failed, poll } from "./live.js";
import { badge, duration, h, importSvg, pretty } from "./dom.js";

const MAX_DETAIL = 240; // characters of an event's payload in its row

function clip(text, limit = MAX_DETAIL) {
  return text.length <= limit ? text : `${text.slice(0, limit - 1)}…`;
}

function facts(play) {
  const rows = [
    ["Flow", h("a", { href: `#/flows/${encodeURIComponent(play.flow)}${query({ version: play.flow_version })}` },
      `${play.flow} v${play.flow_version}`)],
    ["Status", badge(play.status)],
    ["Started", play.started_at],
    ["Ended", play.ended_at || "—"],
    ["Duration", duration(play)],
  ];
  if (play.error) rows.push(["Error", h("span", { class: "error", id: "play-error" }, play.error)]);
  return h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function flowletTable(play) {
  return h(
    "table",
    { id: "flowlets" },
    h("thead", {}, h("tr", {}, ["Flowlet", "Status", "Attempts", "Error"].map((c) => h("th", {}, c)))),
    h(
      "tbody",
      {},
      Object.entries(play.flowlets || {}).map(([name, f]) =>
        h(
          "tr",
          { "data-flowlet": name },
          h("td", {}, name),
          h("td", {}, badge(f.status)),
          h("td", { class: "num" }, String(f.attempts)),
          h("td", { class: "error" }, f.error || ""),
        ),
      ),
    ),
  );
}

function eventRow(e) {
  const { flowlet, ...rest } = e.payload || {};
  return h(
    "tr",
    { "data-seq": e.seq, "data-type": e.type },
    h("td", { class: "num" }, String(e.seq)),
    h("td", {}, e.at || ""),
    h("td", {}, e.type),
    h("td", {}, flowlet ?? ""),
    h("td", { class: "detail" }, h("code", {}, clip(JSON.stringify(rest)))),
  );
}

function verdictOf(audit) {
  const ok = audit.verdict === "ok";
  return h(
    "div",
    { id: "verdict", class: ok ? "verdict ok" : "verdict findings", "data-verdict": audit.verdict },
    h("strong", {}, ok ? "Audit: ok" : "Audit: findings"),
    ` — ${audit.events} events, chain head ${String(audit.head_hash || "").slice(0, 16)}…, `,
    `${audit.anchored ? "anchored by a signed checkpoint" : "not anchored by a signed checkpoint"}`,
    audit.findings && audit.findings.length
      ? h("ul", {}, audit.findings.map((f) => h("li", {}, `seq ${f.seq}: ${f.kind}: ${f.detail}`)))
      : null,
  );
}

export function playView(main, { args: [playId], signal }) {
  const title = h("h1", {}, "Play ", h("span", { class: "id" }, playId));
  const cancel = h("button", { type: "button", id: "cancel", class: "danger", disabled: true }, "Cancel play");
  const problem = h("div");
  const factsBox = h("div", { id: "facts" });
  const chart = h("div", { id: "timeline", class: "chart" });
  const inputBox = h("pre", { id: "input", class: "json" });
  const outputBox = h("pre", { id: "output", class: "json" });
  const flowlets = h("div");
  const events = h("tbody");
  const verdict = h("div", { id: "audit" }, h("p", { class: "muted" }, "The audit verdict shows once the play ends."));
  main.append(
    h("p", {}, h("a", { href: "#/plays" }, "← Plays")),
    title,
    h("div", { class: "actions" }, cancel),
    problem,
    factsBox,
    h("h2", {}, "Timeline"),
    chart,
    h("div", { class: "columns" },
      h("section", {}, h("h2", {}, "Input"), inputBox),
      h("section", {}, h("h2", {}, "Output"), outputBox)),
    h("h2", {}, "Flowlets"),
    flowlets,
    h("h2", {}, "Events"),
    verdict,
    h("table", { id: "events" },
      h("thead", {}, h("tr", {}, ["Seq", "At", "Type", "Flowlet", "Detail"].map((c) => h("th", {}, c)))), events),
  );
  document.title = `Play ${playId} · flow8`;
  const path = `/v1/plays/${encodeURIComponent(playId)}`;
  let current = null;

  cancel.addEventListener("click", async () => {
    if (!current || !window.confirm(`Cancel play ${playId}? Its running flowlets are stopped.`)) return;
    cancel.disabled = true;
    try {
      await call(`${path}/cancel`, { method: "POST", signal });
    } catch (error) {
      if (!(error instanceof HttpError && error.status === 409)) failed(error, problem); // 409: it ended first
    }
  });

  const refresh = async () => {
    try {
      const play = await call(path, { signal });
      const finished = play.status !== "running";
      const [svg, log] = await Promise.all([
        call(`${path}/timeline`, { as: "text", signal }).then(importSvg, (error) => error),
        call(`${path}/events`, { signal }).catch((error) => error),
      ]);
      current = play;
      factsBox.replaceChildren(facts(play));
      cancel.disabled = finished;
      inputBox.textContent = pretty(play.input);
      outputBox.textContent = finished ? pretty(play.output) : "(running)";
      flowlets.replaceChildren(flowletTable(play));
      if (svg instanceof Error) failed(svg, chart);
      else chart.replaceChildren(svg);
      if (log instanceof Error) failed(log, verdict);
      else events.replaceChildren(...log.items.map(eventRow));
      if (finished && !(log instanceof Error)) {
        verdict.replaceChildren(verdictOf(await call(`${path}/audit`, { signal })));
      }
      problem.replaceChildren();
      return !finished;
    } catch (error) {
      failed(error, problem);
      return !(error instanceof HttpError && error.status === 404);
    }
  };
  poll(refresh, signal);
}
