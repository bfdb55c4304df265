// DOM helpers. Every string that reaches the page goes through textContent
// or a property setter, never the HTML parser: span data is untrusted input.

const SVGNS = 'http://www.w3.org/2000/svg';

function apply(el, attrs) {
  if (!attrs) return el;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (k === 'text') el.textContent = String(v);
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === 'dataset') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    else if (k === 'style') for (const [sk, sv] of Object.entries(v)) el.style.setProperty(sk, String(sv));
    else if (k.startsWith('on') || k === 'innerHTML' || k === 'outerHTML' || k === 'srcdoc') {
      throw new Error('refusing to set ' + k);
    } else if (k === 'href' && !safeHref(String(v))) {
      el.setAttribute('href', '#');
    } else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  return el;
}

// safeHref admits only same-origin paths we build ourselves.
function safeHref(v) {
  return v.startsWith('/') && !v.startsWith('//');
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
  return el;
}

export function h(tag, attrs, ...children) {
  return append(apply(document.createElement(tag), attrs), children);
}

export function s(tag, attrs, ...children) {
  return append(apply(document.createElementNS(SVGNS, tag), attrs), children);
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// Formatting.

export function fmtDuration(ns) {
  const a = Math.abs(ns);
  if (a < 1e3) return `${Math.round(ns)} ns`;
  if (a < 1e6) return `${trim(ns / 1e3)} µs`;
  if (a < 1e9) return `${trim(ns / 1e6)} ms`;
  if (a < 60e9) return `${trim(ns / 1e9)} s`;
  const m = Math.floor(a / 60e9), sec = (a - m * 60e9) / 1e9;
  return `${ns < 0 ? '-' : ''}${m} min ${Math.round(sec)} s`;
}

function trim(x) {
  const a = Math.abs(x);
  return a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : x.toFixed(2);
}

export function fmtTime(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

// nsToMs converts a decimal nanosecond string to milliseconds (float).
export function nsToMs(str) {
  try { return Number(BigInt(str) / 1000n) / 1000; } catch { return NaN; }
}

// Service colours: a fixed palette indexed by a hash of the name, so one
// service keeps its colour across views and reloads.
const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#b07aa1', '#76b7b2', '#edc948', '#9c755f',
  '#ff9da7', '#5778a4', '#8cd17d', '#b6992d', '#499894', '#d37295', '#a0cbe8', '#86bcb6', '#d4a6c8'];

export function serviceColor(name) {
  let hsh = 2166136261;
  for (let i = 0; i < name.length; i++) { hsh ^= name.charCodeAt(i); hsh = Math.imul(hsh, 16777619); }
  return PALETTE[(hsh >>> 0) % PALETTE.length];
}

export function valueText(v) {
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
}

export function copyButton(text, label = 'copy') {
  const b = h('button', { type: 'button', class: 'copy ghost', title: 'Copy ' + text, text: label });
  b.addEventListener('click', async (ev) => {
    ev.stopPropagation();
    try { await navigator.clipboard.writeText(text); b.textContent = 'copied'; } catch { b.textContent = 'select & copy'; }
    setTimeout(() => { b.textContent = label; }, 1200);
  });
  return b;
}

export function note(text, cls = 'note') {
  return h('p', { class: cls, text });
}
