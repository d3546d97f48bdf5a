// The API client: the key lives in this tab's sessionStorage only (never a URL, a cookie or a log)
// and goes with every /v1 call as Authorization: Bearer. A 401 forgets it and raises Unauthorized.

const STORAGE = "flow8.key";

export const key = () => sessionStorage.getItem(STORAGE);
export const remember = (value) => sessionStorage.setItem(STORAGE, value);
export const forget = () => sessionStorage.removeItem(STORAGE);

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export class Unauthorized extends HttpError {}

// The message of an error response: FastAPI's detail, a string or a list naming each field.
async function detail(response) {
  let body;
  try {
    body = await response.json();
  } catch {
    return `${response.status} ${response.statusText}`;
  }
  const d = body && body.detail;
  if (Array.isArray(d)) {
    return d.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  }
  return typeof d === "string" ? d : `${response.status} ${response.statusText}`;
}

// A /v1 call with the key (or `withKey`): JSON by default, the text of an SVG with {as: "text"}.
export async function call(path, { method = "GET", body, as = "json", signal, withKey } = {}) {
  const headers = { Authorization: `Bearer ${withKey ?? key() ?? ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
  });
  if (response.status === 401) {
    if (withKey === undefined) forget();
    throw new Unauthorized(401, await detail(response));
  }
  if (!response.ok) throw new HttpError(response.status, await detail(response));
  return as === "text" ? response.text() : response.json();
}

// A query string of the set values only.
export function query(params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") q.set(name, String(value));
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}
