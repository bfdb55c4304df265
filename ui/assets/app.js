// Threadline UI entry point: routing, theme, embed mode and keyboard
// dispatch. Views are modules exporting render(root, ctx) → {destroy, onKey}.
import { h, clear } from './dom.js';
import * as search from './search.js';
import * as trace from './trace.js';
import * as metrics from './metrics.js';
import * as servicemap from './map.js';

const main = document.getElementById('main');
let current = null;

// Parameters that persist across navigation (embed mode, theme).
const sticky = ['embed', 'theme'];

function stickyParams() {
  const now = new URLSearchParams(location.search);
  const out = new URLSearchParams();
  for (const k of sticky) if (now.has(k)) out.set(k, now.get(k));
  return out;
}

// href adds the sticky parameters to an internal path.
export function href(path) {
  const [p, q = ''] = path.split('?');
  const params = new URLSearchParams(q);
  for (const [k, v] of stickyParams()) if (!params.has(k)) params.set(k, v);
  const s = params.toString();
  return s ? `${p}?${s}` : p;
}

export function navigate(path, { replace = false } = {}) {
  const url = href(path);
  if (replace) history.replaceState(null, '', url); else history.pushState(null, '', url);
  route();
}

// setParams rewrites the current URL's query without re-rendering.
export function setParams(params, { push = false } = {}) {
  const q = new URLSearchParams(location.search);
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === '' || v === false) q.delete(k); else q.set(k, String(v));
  }
  const s = q.toString();
  const url = location.pathname + (s ? '?' + s : '');
  if (push) history.pushState(null, '', url); else history.replaceState(null, '', url);
}

function applyTheme() {
  const q = new URLSearchParams(location.search).get('theme');
  let theme = q === 'dark' || q === 'light' ? q : null;
  if (!theme) {
    try { theme = localStorage.getItem('threadline.theme'); } catch { theme = null; }
  }
  if (theme !== 'dark' && theme !== 'light') {
    theme = matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
  }
  document.documentElement.dataset.theme = theme;
}

function applyEmbed() {
  const embed = new URLSearchParams(location.search).get('embed');
  const on = embed === '1' || embed === 'true';
  document.documentElement.classList.toggle('embed', on);
  document.getElementById('nav').hidden = on;
}

function route() {
  applyTheme();
  applyEmbed();
  if (current && current.destroy) current.destroy();
  current = null;
  clear(main);
  const path = location.pathname;
  const ctx = { navigate, setParams, href, params: new URLSearchParams(location.search) };
  let view = 'search';
  let m;
  if ((m = path.match(/^\/trace\/([^/]+)\/?$/))) {
    view = 'trace';
    current = trace.render(main, { ...ctx, traceID: decodeURIComponent(m[1]) });
  } else if (path === '/map') {
    view = 'map';
    current = servicemap.render(main, ctx);
  } else if (path === '/metrics-view') {
    view = 'metrics';
    current = metrics.render(main, ctx);
  } else {
    current = search.render(main, ctx);
  }
  document.body.dataset.view = view;
  for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === view);
}

// Internal links navigate without reloading; modified clicks open tabs.
document.addEventListener('click', (ev) => {
  const a = ev.target.closest('a[data-internal]');
  if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  const url = new URL(a.getAttribute('href') || '', location.href);
  if (url.origin !== location.origin) return;
  ev.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener('popstate', route);

document.getElementById('theme-toggle').addEventListener('click', () => {
  const next = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
  try { localStorage.setItem('threadline.theme', next); } catch { /* private mode */ }
  if (new URLSearchParams(location.search).has('theme')) setParams({ theme: next });
  document.documentElement.dataset.theme = next;
});

function typing(el) {
  return el && (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT' || el.isContentEditable);
}

document.addEventListener('keydown', (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === 'Escape' && typing(document.activeElement)) { document.activeElement.blur(); return; }
  if (typing(document.activeElement)) return;
  if (ev.key === '/') {
    const f = main.querySelector('[data-focus-search]');
    if (f) { ev.preventDefault(); f.focus(); f.select && f.select(); }
    return;
  }
  if (current && current.onKey && current.onKey(ev)) ev.preventDefault();
});

route();
