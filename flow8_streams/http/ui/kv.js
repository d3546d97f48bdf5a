// #/kv: the company's KV keys by prefix, a key's value and version, and setting a value (JSON,
// checked here before it is sent).

import { HttpError, call, query } from "./api.js";
import { failed } from "./live.js";
import { h, pretty } from "./dom.js";

const MAX_KEY = 512;

export function kvView(main, { signal }) {
  const prefix = h("input", { id: "kv-prefix", maxlength: MAX_KEY, placeholder: "prefix (empty: all)" });
  const listForm = h("form", { id: "kv-list-form", class: "filters" },
    h("label", {}, "Keys starting with ", prefix), h("button", { type: "submit" }, "List"));
  const keys = h("ul", { id: "kv-keys", class: "keys" });
  const more = h("button", { type: "button", id: "kv-more", hidden: true }, "More");

  const lookupKey = h("input", { id: "kv-key", maxlength: MAX_KEY, required: true, spellcheck: "false" });
  const lookupForm = h("form", { id: "kv-get-form", class: "filters" },
    h("label", {}, "Key ", lookupKey), h("button", { type: "submit" }, "Look up"));
  const shown = h("div", { id: "kv-value" });

  const setKey = h("input", { id: "kv-set-key", maxlength: MAX_KEY, required: true, spellcheck: "false" });
  const setValue = h("textarea", { id: "kv-set-value", rows: 6, spellcheck: "false", placeholder: '{"any": "JSON"}' });
  const setResult = h("div", { id: "kv-set-result", role: "status" });
  const setForm = h("form", { id: "kv-set-form" },
    h("label", {}, "Key ", setKey), h("label", { class: "block" }, "Value (JSON) ", setValue),
    h("button", { type: "submit" }, "Set"), setResult);

  main.append(
    h("h1", {}, "KV"),
    h("div", { class: "columns" },
      h("section", {}, h("h2", {}, "Keys"), listForm, keys, more),
      h("section", {}, h("h2", {}, "Look up"), lookupForm, shown, h("h2", {}, "Set a value"), setForm)),
  );
  document.title = "KV · flow8";

  const kvPath = (name) => `/v1/kv/${name.split("/").map(encodeURIComponent).join("/")}`;

  const lookup = async (name) => {
    lookupKey.value = name;
    try {
      const entry = await call(kvPath(name), { signal });
      shown.replaceChildren(
        h("p", {}, "Key ", h("code", { id: "kv-shown-key" }, entry.key), " at version ",
          h("strong", { id: "kv-version" }, String(entry.version))),
        h("pre", { class: "json", id: "kv-shown-value" }, pretty(entry.value)),
      );
    } catch (error) {
      if (error instanceof HttpError && error.status === 404) {
        shown.replaceChildren(h("p", { class: "muted", id: "kv-missing" }, `No key ${JSON.stringify(name)}.`));
      } else failed(error, shown);
    }
  };

  let cursor = null;
  const list = async (fresh) => {
    if (fresh) {
      cursor = null;
      keys.replaceChildren();
    }
    try {
      const page = await call(`/v1/kv${query({ prefix: prefix.value, cursor })}`, { signal });
      for (const { key } of page.items) {
        const button = h("button", { type: "button", class: "link", "data-key": key }, key);
        button.addEventListener("click", () => lookup(key));
        keys.append(h("li", {}, button));
      }
      if (fresh && !page.items.length) keys.append(h("li", { class: "muted" }, "No keys."));
      cursor = page.next_cursor;
      more.hidden = !cursor;
    } catch (error) {
      failed(error, keys);
    }
  };

  listForm.addEventListener("submit", (event) => {
    event.preventDefault();
    list(true);
  });
  more.addEventListener("click", () => list(false));
  lookupForm.addEventListener("submit", (event) => {
    event.preventDefault();
    lookup(lookupKey.value);
  });
  setForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    setResult.className = "";
    let value;
    try {
      value = JSON.parse(setValue.value);
    } catch (error) {
      setResult.className = "error";
      setResult.textContent = `Not JSON, nothing sent: ${error.message}`;
      return;
    }
    try {
      const entry = await call(kvPath(setKey.value), { method: "PUT", body: { value }, signal });
      setResult.textContent = `Set ${entry.key} to version ${entry.version}.`;
      await lookup(entry.key);
    } catch (error) {
      setResult.className = "error";
      failed(error, setResult);
    }
  });
  list(true);
}
