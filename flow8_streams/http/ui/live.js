// What every view shares: polling while the tab is visible, and how a failed request is shown
// (a 401 signs the tab out: the shell shows the sign-in with the message).

import { Unauthorized } from "./api.js";
import { h } from "./dom.js";

const POLL_MS = 2000;
export const SIGNED_OUT = "flow8:signed-out";

// What every view calls when a request fails: a 401 signs out, anything else shows in `where`.
export function failed(error, where) {
  if (error.name === "AbortError") return;
  if (error instanceof Unauthorized) {
    const message = `Signed out: the server refused the key (${error.message}). Sign in again.`;
    window.dispatchEvent(new CustomEvent(SIGNED_OUT, { detail: message }));
    return;
  }
  if (where) where.replaceChildren(h("p", { class: "error", role: "alert" }, error.message));
}

// Run `fn` now and every POLL_MS while the tab is visible, until `signal` aborts or `fn` returns false.
export function poll(fn, signal) {
  let timer = null;
  const tick = async () => {
    timer = null;
    if (signal.aborted) return;
    let again = true;
    if (document.visibilityState === "visible") again = (await fn()) !== false;
    if (again && !signal.aborted) timer = setTimeout(tick, POLL_MS);
  };
  const visible = () => {
    if (document.visibilityState === "visible" && timer !== null) {
      clearTimeout(timer);
      tick();
    }
  };
  document.addEventListener("visibilitychange", visible, { signal });
  signal.addEventListener("abort", () => timer !== null && clearTimeout(timer));
  tick();
}
