// The UI's shell: sign-in, sign-out, and a view per route of the hash (#/plays, #/plays/ID,
// #/flows, #/flows/NAME, #/kv). A view gets an AbortSignal that fires when it is left, and a
// 401 from any call brings the sign-in back with its message.

import { Unauthorized, call, forget, key, remember } from "./api.js";
import { clear, h } from "./dom.js";
import { flowView, flowsView } from "./flows.js";
import { kvView } from "./kv.js";
import { SIGNED_OUT } from "./live.js";
import { playView } from "./play.js";
import { playsView } from "./plays.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signInSection = document.getElementById("sign-in");
const signInForm = document.getElementById("sign-in-form");
const signInError = document.getElementById("sign-in-error");
let leaving = null; // aborts the current view

const ROUTES = [
  [/^\/plays\/([^/]+)$/, "plays", playView],
  [/^\/plays\/?$/, "plays", playsView],
  [/^\/flows\/([^/]+)$/, "flows", flowView],
  [/^\/flows\/?$/, "flows", flowsView],
  [/^\/kv\/?$/, "kv", kvView],
];

function hashParts() {
  const raw = location.hash.replace(/^#/, "") || "/plays";
  const at = raw.indexOf("?");
  return at < 0 ? [raw, new URLSearchParams()] : [raw.slice(0, at), new URLSearchParams(raw.slice(at + 1))];
}

function showSignIn(message) {
  leaving?.abort();
  leaving = null;
  forget();
  main.hidden = true;
  nav.hidden = true;
  clear(main);
  signInSection.hidden = false;
  signInError.textContent = message || "";
  document.title = "Sign in · flow8";
  signInForm.elements.key.focus();
}

function route() {
  if (!key()) {
    showSignIn(signInError.textContent);
    return;
  }
  leaving?.abort();
  leaving = new AbortController();
  signInSection.hidden = true;
  nav.hidden = false;
  main.hidden = false;
  clear(main);
  const [path, params] = hashParts();
  for (const [pattern, section, view] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    for (const a of nav.querySelectorAll("a")) a.classList.toggle("current", a.dataset.section === section);
    const args = match.slice(1).map(decodeURIComponent);
    view(main, { args, params, signal: leaving.signal });
    return;
  }
  main.append(h("p", { class: "error" }, "No such page. "), h("a", { href: "#/plays" }, "Plays"));
}

signInForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const candidate = signInForm.elements.key.value.trim();
  signInError.textContent = "";
  if (!candidate) {
    signInError.textContent = "Enter an API key.";
    return;
  }
  try {
    await call("/v1/plays?limit=1", { withKey: candidate }); // proves the key before keeping it
  } catch (error) {
    signInError.textContent =
      error instanceof Unauthorized ? `That key was refused: ${error.message}` : `Cannot sign in: ${error.message}`;
    return;
  }
  signInForm.reset();
  remember(candidate);
  if (!location.hash || location.hash === "#") location.hash = "#/plays";
  route();
});

document.getElementById("sign-out").addEventListener("click", () => showSignIn("Signed out."));
window.addEventListener("hashchange", route);
window.addEventListener(SIGNED_OUT, (event) => showSignIn(event.detail));
route();
