// Fetch helpers for the query service's JSON APIs.

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export async function getJSON(url, opts = {}) {
  const resp = await fetch(url, { headers: { Accept: 'application/json' }, signal: opts.signal });
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!resp.ok) {
    let msg = `${resp.status} ${resp.statusText}`;
    if (body && typeof body.error === 'string') msg = body.error;
    else if (body && Array.isArray(body.errors) && body.errors.length) msg = body.errors.map((e) => e.msg).join('; ');
    else if (text && text.length < 300) msg = text.trim();
    throw new ApiError(resp.status, msg);
  }
  return body;
}

export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '' || v === false) continue;
    u.set(k, String(v));
  }
  const s = u.toString();
  return s ? '?' + s : '';
}

export const HEX32 = /^[0-9a-f]{32}$/i;
export const HEX16 = /^[0-9a-f]{16}$/i;
