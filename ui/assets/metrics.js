// Metric → traces: rate, error rate and latency percentiles of one
// service/operation over time, alert events marked; clicking a point lists
// the traces behind it.
import { h, s, clear, fmtDuration, fmtTime, note } from './dom.js';
import { getJSON, qs, HEX32 } from './api.js';
import { RANGES, timeRange, loadServices, loadOperations } from './search.js';

export function render(root, ctx) {
  const p = ctx.params;
  const ctrl = new AbortController();
  const service = h('select', { id: 'm-service', name: 'service' }, h('option', { value: '', text: 'all services' }));
  const operation = h('select', { id: 'm-operation', name: 'operation' }, h('option', { value: '', text: 'all operations' }));
  const range = h('select', { id: 'm-range', name: 'range' },
    ...Object.keys(RANGES).map((r) => h('option', { value: r, text: 'last ' + r, selected: (p.get('range') || '1h') === r })));
  service.addEventListener('change', () => loadOperations(operation, service.value, ''));
  const form = h('form', { class: 'search-form' },
    h('label', null, 'Service', service), h('label', null, 'Operation', operation), h('label', null, 'Time range', range),
    h('button', { type: 'submit', class: 'primary', text: 'Show' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    ctx.navigate('/metrics-view' + qs({ service: service.value, operation: operation.value, range: range.value }));
  });
  const charts = h('div', { class: 'charts', id: 'charts' });
  const traces = h('div', { class: 'point-traces', id: 'point-traces' });
  root.appendChild(h('section', { class: 'view metrics-view' }, h('h1', { text: 'Metric → traces' }), form, charts, traces));
  loadServices(service, p.get('service') || '').then(() => loadOperations(operation, service.value, p.get('operation') || ''));
  load(p, charts, traces, ctx, ctrl.signal);
  return { destroy: () => ctrl.abort() };
}

async function load(p, charts, traces, ctx, signal) {
  const { start, end } = timeRange(p);
  const step = Math.max(10, Math.round((end - start) / 60));
  charts.appendChild(note('Loading…'));
  let series, alerts = [];
  try {
    const res = await getJSON('/api/v1/metrics/red' + qs({ service: p.get('service'), operation: p.get('operation'), start, end, step }), { signal });
    series = (res && res.series) || [];
  } catch (err) {
    if (signal.aborted) return;
    clear(charts).appendChild(note(err.status === 404 ? 'Metrics not available yet: this query service has no RED metrics API.' : 'Metrics failed: ' + err.message, err.status === 404 ? 'note' : 'error-note'));
    charts.firstChild.id = 'metrics-unavailable';
    return;
  }
  try {
    const res = await getJSON('/api/v1/alerts' + qs({ start, end }), { signal });
    alerts = (res && res.alerts) || [];
  } catch { alerts = []; }
  clear(charts);
  if (!series.length) { charts.appendChild(note('No data points in this range.')); return; }
  const pick = (pt) => showTraces(traces, `${fmtTime(pt.t * 1000)}`, pt.traceIDs || [], ctx);
  charts.appendChild(chart('Rate (req/s)', series, [['rate', 'rate']], alerts, pick, (v) => v.toFixed(2)));
  charts.appendChild(chart('Error rate', series, [['errorRate', 'errors']], alerts, pick, (v) => (v * 100).toFixed(1) + '%'));
  charts.appendChild(chart('Latency', series, [['p50', 'p50'], ['p90', 'p90'], ['p99', 'p99']], alerts, pick, (v) => fmtDuration(v * 1e6)));
  if (alerts.length) {
    charts.appendChild(h('div', { class: 'alerts' }, h('h3', { text: 'Alerts' }),
      h('ul', null, ...alerts.map((a) => {
        const li = h('li', { class: 'alert ' + (a.state === 'firing' ? 'firing' : 'resolved') },
          h('strong', { text: a.name || a.id || 'alert' }), ' ', h('span', { text: a.state || '' }), ' ',
          h('span', { class: 'muted', text: fmtTime((a.t || 0) * 1000) }), ' ',
          ...Object.entries(a.labels || {}).map(([k, v]) => h('span', { class: 'chip', text: `${k}=${v}` })));
        li.addEventListener('click', () => showTraces(traces, 'alert ' + (a.name || ''), a.traceIDs || [], ctx));
        return li;
      }))));
  }
}

function chart(title, series, keys, alerts, onPick, fmt) {
  const W = 1000, H = 150, PAD = 46;
  const t0 = series[0].t, t1 = series[series.length - 1].t || t0 + 1;
  const max = Math.max(...series.flatMap((pt) => keys.map(([k]) => Number(pt[k]) || 0))) * 1.1 || 1;
  const X = (t) => PAD + (t - t0) / ((t1 - t0) || 1) * (W - PAD * 2);
  const Y = (v) => H - 18 - v / max * (H - 30);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart-svg', role: 'img', 'aria-label': title });
  svg.appendChild(s('line', { x1: PAD, y1: H - 18, x2: W - PAD, y2: H - 18, class: 'axis' }));
  svg.appendChild(s('text', { x: PAD - 4, y: 14, 'text-anchor': 'end', class: 'axis-label', text: fmt(max) }));
  svg.appendChild(s('text', { x: PAD, y: H - 3, class: 'axis-label', text: fmtTime(t0 * 1000) }));
  svg.appendChild(s('text', { x: W - PAD, y: H - 3, 'text-anchor': 'end', class: 'axis-label', text: fmtTime(t1 * 1000) }));
  for (const a of alerts) {
    if (a.t < t0 || a.t > t1) continue;
    svg.appendChild(s('line', { x1: X(a.t), x2: X(a.t), y1: 4, y2: H - 18, class: 'alert-mark ' + (a.state === 'firing' ? 'firing' : 'resolved') },
      s('title', { text: `${a.name || 'alert'} ${a.state || ''}` })));
  }
  keys.forEach(([k], ki) => {
    const pts = series.map((pt) => `${X(pt.t).toFixed(1)},${Y(Number(pt[k]) || 0).toFixed(1)}`).join(' ');
    svg.appendChild(s('polyline', { points: pts, class: 'series s' + ki }));
    for (const pt of series) {
      const c = s('circle', { cx: X(pt.t), cy: Y(Number(pt[k]) || 0), r: 4, class: 'pt s' + ki + ((pt.traceIDs || []).length ? ' has-traces' : '') },
        s('title', { text: `${fmtTime(pt.t * 1000)} ${k}=${fmt(Number(pt[k]) || 0)} — ${(pt.traceIDs || []).length} traces` }));
      c.addEventListener('click', () => onPick(pt));
      svg.appendChild(c);
    }
  });
  return h('figure', { class: 'chart' }, h('figcaption', null, title, ' ', ...keys.map(([, label], ki) => h('span', { class: 'key s' + ki, text: label }))), svg);
}

function showTraces(el, label, ids, ctx) {
  clear(el);
  el.appendChild(h('h3', { text: `Traces behind ${label}` }));
  const valid = ids.filter((id) => HEX32.test(id));
  if (!valid.length) { el.appendChild(note('No kept traces are linked to this point.')); return; }
  el.appendChild(h('ul', null, ...valid.map((id) => h('li', null, h('a', { href: ctx.href('/trace/' + id.toLowerCase()), 'data-internal': true, class: 'mono', text: id })))));
}
