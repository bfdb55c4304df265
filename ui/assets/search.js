// Search view: filters in the URL, results as a duration-over-time scatter
// and a list.
import { h, s, clear, fmtDuration, fmtTime, nsToMs, serviceColor, note } from './dom.js';
import { getJSON, qs } from './api.js';

export const RANGES = { '15m': 15 * 60, '1h': 3600, '6h': 6 * 3600, '24h': 86400, '7d': 7 * 86400, '30d': 30 * 86400 };
const REASONS = ['', 'error', 'latency_topn', 'exemplar', 'alert', 'baseline'];
const FIELDS = ['service', 'operation', 'tags', 'minDuration', 'maxDuration', 'range', 'start', 'end', 'errorsOnly', 'keptReason', 'limit'];

// timeRange turns the URL's range (relative) or start/end (datetime-local)
// into unix seconds.
export function timeRange(p) {
  const range = p.get('range') || '1h';
  if (range === 'custom') {
    const st = Date.parse(p.get('start') || ''), en = Date.parse(p.get('end') || '');
    return { start: isNaN(st) ? undefined : Math.floor(st / 1000), end: isNaN(en) ? undefined : Math.ceil(en / 1000) };
  }
  const secs = RANGES[range] || 3600;
  const end = Math.ceil(Date.now() / 1000);
  return { start: end - secs, end };
}

export async function loadServices(select, selected) {
  try {
    const res = await getJSON('/api/services');
    for (const name of res.data || []) select.appendChild(h('option', { value: name, text: name, selected: name === selected }));
  } catch { /* the select stays usable with "any" */ }
}

export async function loadOperations(select, service, selected) {
  while (select.options.length > 1) select.remove(1);
  if (!service) return;
  try {
    const res = await getJSON('/api/services/' + encodeURIComponent(service) + '/operations');
    for (const name of res.data || []) select.appendChild(h('option', { value: name, text: name, selected: name === selected }));
  } catch { /* keep "any" */ }
}

export function render(root, ctx) {
  const p = ctx.params;
  const ctrl = new AbortController();
  const field = (name, el) => { el.name = name; return el; };

  const service = field('service', h('select', { id: 'f-service' }, h('option', { value: '', text: 'any service' })));
  const operation = field('operation', h('select', { id: 'f-operation' }, h('option', { value: '', text: 'any operation' })));
  const tags = field('tags', h('input', { id: 'f-tags', type: 'text', placeholder: 'http.status_code=500 db.system="postgres"', value: p.get('tags') || '', 'data-focus-search': true, autocomplete: 'off', spellcheck: 'false' }));
  const minD = field('minDuration', h('input', { id: 'f-min', type: 'text', placeholder: 'e.g. 100ms', value: p.get('minDuration') || '', size: 8 }));
  const maxD = field('maxDuration', h('input', { id: 'f-max', type: 'text', placeholder: 'e.g. 5s', value: p.get('maxDuration') || '', size: 8 }));
  const range = field('range', h('select', { id: 'f-range' },
    ...Object.keys(RANGES).map((r) => h('option', { value: r, text: 'last ' + r, selected: (p.get('range') || '1h') === r })),
    h('option', { value: 'custom', text: 'custom…', selected: p.get('range') === 'custom' })));
  const start = field('start', h('input', { type: 'datetime-local', step: 1, value: p.get('start') || '' }));
  const end = field('end', h('input', { type: 'datetime-local', step: 1, value: p.get('end') || '' }));
  const custom = h('span', { class: 'custom-range' }, start, ' – ', end);
  const errorsOnly = field('errorsOnly', h('input', { id: 'f-errors', type: 'checkbox', checked: p.get('errorsOnly') === 'true' }));
  const reason = field('keptReason', h('select', { id: 'f-reason' },
    ...REASONS.map((r) => h('option', { value: r, text: r ? r : 'any reason', selected: (p.get('keptReason') || '') === r }))));
  const limit = field('limit', h('input', { type: 'number', min: 1, max: 1000, value: p.get('limit') || '50', size: 4 }));
  const submit = h('button', { type: 'submit', class: 'primary', id: 'f-submit', text: 'Find traces' });

  const syncCustom = () => { custom.hidden = range.value !== 'custom'; };
  range.addEventListener('change', syncCustom);
  syncCustom();
  service.addEventListener('change', () => loadOperations(operation, service.value, ''));

  const form = h('form', { class: 'search-form', id: 'search-form' },
    h('label', null, 'Service', service),
    h('label', null, 'Operation', operation),
    h('label', { class: 'grow' }, 'Attributes (logfmt)', tags),
    h('label', null, 'Min duration', minD),
    h('label', null, 'Max duration', maxD),
    h('label', null, 'Time range', range, custom),
    h('label', null, 'Why kept', reason),
    h('label', { class: 'check' }, errorsOnly, 'errors only'),
    h('label', null, 'Limit', limit),
    submit);

  const status = h('div', { class: 'search-status', id: 'search-status' });
  const scatter = h('div', { class: 'scatter', id: 'scatter' });
  const list = h('div', { class: 'results', id: 'results' });
  root.appendChild(h('section', { class: 'view search-view' }, form, status, scatter, list));

  loadServices(service, p.get('service') || '').then(() => loadOperations(operation, service.value, p.get('operation') || ''));

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const params = {};
    for (const f of FIELDS) {
      const el = form.elements[f];
      if (!el) continue;
      if (el.type === 'checkbox') params[f] = el.checked ? 'true' : '';
      else params[f] = el.value.trim();
    }
    if (params.range !== 'custom') { params.start = ''; params.end = ''; }
    if (params.limit === '50') params.limit = '';
    ctx.navigate('/search' + qs(params));
  });

  run(p, status, scatter, list, ctx, ctrl.signal);
  return { destroy: () => ctrl.abort() };
}

async function run(p, status, scatter, list, ctx, signal) {
  const { start, end } = timeRange(p);
  const params = {
    service: p.get('service'), operation: p.get('operation'), tags: p.get('tags'),
    minDuration: p.get('minDuration'), maxDuration: p.get('maxDuration'),
    errorsOnly: p.get('errorsOnly') === 'true' ? 'true' : '', keptReason: p.get('keptReason'),
    limit: p.get('limit') || 50, start, end,
  };
  status.textContent = 'Searching…';
  let res;
  try {
    res = await getJSON('/api/v1/search' + qs(params), { signal });
  } catch (err) {
    if (signal.aborted) return;
    clear(status).appendChild(note('Search failed: ' + err.message, 'error-note'));
    return;
  }
  const traces = res.traces || [];
  clear(status).appendChild(h('span', { text: `${traces.length} trace${traces.length === 1 ? '' : 's'}` }));
  for (const w of res.warnings || []) status.appendChild(note(w, 'warn-note'));
  if (!traces.length) {
    list.appendChild(note('No traces match. Widen the time range or remove a filter.'));
    return;
  }
  drawScatter(scatter, traces, ctx);
  drawList(list, traces, ctx);
}

function drawScatter(el, traces, ctx) {
  const W = 1000, H = 180, PAD = 40;
  const xs = traces.map((t) => nsToMs(t.startTimeUnixNano));
  const ys = traces.map((t) => t.durationMs);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x1 === x0) { x0 -= 1000; x1 += 1000; }
  const y1 = Math.max(...ys) * 1.1 || 1;
  const X = (v) => PAD + (v - x0) / (x1 - x0) * (W - PAD * 2);
  const Y = (v) => H - 20 - v / y1 * (H - 30);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'scatter-svg', role: 'img', 'aria-label': 'Trace duration over time' });
  svg.appendChild(s('line', { x1: PAD, y1: H - 20, x2: W - PAD, y2: H - 20, class: 'axis' }));
  svg.appendChild(s('line', { x1: PAD, y1: 10, x2: PAD, y2: H - 20, class: 'axis' }));
  svg.appendChild(s('text', { x: PAD - 4, y: 16, class: 'axis-label', 'text-anchor': 'end', text: fmtDuration(y1 * 1e6) }));
  svg.appendChild(s('text', { x: PAD, y: H - 4, class: 'axis-label', text: fmtTime(x0) }));
  svg.appendChild(s('text', { x: W - PAD, y: H - 4, class: 'axis-label', 'text-anchor': 'end', text: fmtTime(x1) }));
  traces.forEach((t, i) => {
    const r = Math.max(4, Math.min(12, 3 + Math.sqrt(t.spanCount || 1)));
    const a = s('a', { href: ctx.href('/trace/' + t.traceID), 'data-internal': true, class: 'dot-link' },
      s('circle', { cx: X(xs[i]), cy: Y(ys[i]), r, class: t.errorCount > 0 ? 'dot error' : 'dot' },
        s('title', { text: `${t.rootServiceName}: ${t.rootTraceName} — ${fmtDuration(t.durationMs * 1e6)}` })));
    svg.appendChild(a);
  });
  el.appendChild(svg);
}

function drawList(el, traces, ctx) {
  const maxDur = Math.max(...traces.map((t) => t.durationMs)) || 1;
  const rows = traces.map((t) => {
    const link = h('a', { href: ctx.href('/trace/' + t.traceID), 'data-internal': true, class: 'trace-link' },
      h('span', { class: 'svc', text: t.rootServiceName || '<root span not yet received>' }), ': ',
      h('span', { class: 'op', text: t.rootTraceName || '' }));
    const bar = h('div', { class: 'dur-bar' }, h('div', { class: t.errorCount ? 'dur-fill error' : 'dur-fill', style: { width: (t.durationMs / maxDur * 100).toFixed(2) + '%' } }));
    return h('tr', { class: 'result-row', dataset: { traceId: t.traceID } },
      h('td', null, link, h('div', { class: 'tid mono', text: t.traceID })),
      h('td', { class: 'num' }, h('div', { text: fmtDuration(t.durationMs * 1e6) }), bar),
      h('td', { class: 'num', text: String(t.spanCount) }),
      h('td', { class: 'num' }, t.errorCount ? h('span', { class: 'badge error', text: `${t.errorCount} error${t.errorCount === 1 ? '' : 's'}` }) : '—'),
      h('td', null, ...(t.keptReasons || []).map((r) => h('span', { class: 'chip reason', text: r }))),
      h('td', null, ...(t.services || []).map((sv) => h('span', { class: 'chip svc-chip', style: { '--svc': serviceColor(sv) }, text: sv }))),
      h('td', { class: 'time', text: fmtTime(nsToMs(t.startTimeUnixNano)) }));
  });
  el.appendChild(h('table', { class: 'result-table' },
    h('thead', null, h('tr', null, ...['Trace', 'Duration', 'Spans', 'Errors', 'Why kept', 'Services', 'Start'].map((c) => h('th', { text: c })))),
    h('tbody', null, ...rows)));
}
