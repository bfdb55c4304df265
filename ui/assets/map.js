// Service map: services and their call edges over a time range, coloured by
// error rate and latency where the RED metrics API provides them.
import { h, s, clear, fmtDuration, note } from './dom.js';
import { getJSON, qs } from './api.js';
import { RANGES } from './search.js';

export function render(root, ctx) {
  const p = ctx.params;
  const ctrl = new AbortController();
  const rangeKey = p.get('range') && RANGES[p.get('range')] ? p.get('range') : '24h';
  const range = h('select', { id: 'map-range' }, ...Object.keys(RANGES).map((r) => h('option', { value: r, text: 'last ' + r, selected: r === rangeKey })));
  range.addEventListener('change', () => ctx.navigate('/map' + qs({ range: range.value })));
  const canvas = h('div', { class: 'map', id: 'service-map' }, note('Loading…'));
  root.appendChild(h('section', { class: 'view map-view' },
    h('div', { class: 'title-row' }, h('h1', { text: 'Service map' }), range,
      h('span', { class: 'legend' }, ...[['ok', '< 1% errors'], ['warn', '< 5%'], ['bad', '< 20%'], ['crit', '≥ 20%'], ['unknown', 'no metrics']].map(([c, t]) =>
        h('span', { class: 'legend-item' }, h('span', { class: 'health-dot ' + c }), h('span', { text: t }))))),
    canvas));
  load(canvas, RANGES[rangeKey], ctx, ctrl.signal);
  return { destroy: () => ctrl.abort() };
}

async function load(el, secs, ctx, signal) {
  const endMs = Date.now();
  let deps;
  try {
    const res = await getJSON('/api/dependencies' + qs({ endTs: endMs, lookback: secs * 1000 }), { signal });
    deps = (res && res.data) || [];
  } catch (err) {
    if (signal.aborted) return;
    clear(el).appendChild(note('Could not load dependencies: ' + err.message, 'error-note'));
    return;
  }
  const services = [...new Set(deps.flatMap((d) => [d.parent, d.child]))].sort();
  if (!services.length) { clear(el).appendChild(note('No service calls in this range.')); return; }

  // Health per service from RED metrics, when that API exists.
  const health = new Map();
  const end = Math.ceil(endMs / 1000), start = end - secs;
  for (const svc of services) {
    try {
      const res = await getJSON('/api/v1/metrics/red' + qs({ service: svc, start, end, step: secs }), { signal });
      const ser = (res && res.series) || [];
      if (ser.length) {
        const errs = ser.reduce((a, pt) => a + (pt.errorRate || 0), 0) / ser.length;
        const p99 = Math.max(...ser.map((pt) => pt.p99 || 0));
        health.set(svc, { errorRate: errs, p99 });
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err.status === 404) break; // no metrics API: every node stays "unknown"
    }
  }

  // Layered layout: a service's column is its longest call depth from a root.
  const parents = new Map(services.map((x) => [x, []]));
  for (const d of deps) parents.get(d.child).push(d.parent);
  const depth = new Map();
  const depthOf = (svc, seen = new Set()) => {
    if (depth.has(svc)) return depth.get(svc);
    if (seen.has(svc)) return 0; // a call cycle
    seen.add(svc);
    const ps = parents.get(svc).filter((x) => x !== svc);
    const d = ps.length ? Math.max(...ps.map((x) => depthOf(x, seen) + 1)) : 0;
    seen.delete(svc);
    depth.set(svc, d);
    return d;
  };
  services.forEach((x) => depthOf(x));
  const cols = [];
  for (const svc of services) (cols[depth.get(svc)] = cols[depth.get(svc)] || []).push(svc);
  // Order each column by the mean row of its callers to cut crossings.
  const rowOf = new Map();
  cols.forEach((col) => {
    const key = (svc) => {
      const rs = parents.get(svc).map((x) => rowOf.get(x)).filter((r) => r !== undefined);
      return rs.length ? rs.reduce((a, r) => a + r, 0) / rs.length : -1;
    };
    col.sort((a, b) => key(a) - key(b) || (a < b ? -1 : 1));
    col.forEach((svc, i) => rowOf.set(svc, i));
  });
  const NW = 170, NH = 44, GX = 90, GY = 26;
  const pos = new Map();
  cols.forEach((col, ci) => col.forEach((svc, ri) => pos.set(svc, { x: 20 + ci * (NW + GX), y: 20 + ri * (NH + GY) })));
  const W = 40 + cols.length * (NW + GX), H = 40 + Math.max(...cols.map((c) => c.length)) * (NH + GY);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'map-svg', role: 'img', 'aria-label': 'Service map' },
    s('defs', null, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: 'userSpaceOnUse', orient: 'auto-start-reverse' },
      s('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrow-head' }))));
  const maxCalls = Math.max(...deps.map((d) => d.callCount)) || 1;
  for (const d of deps) {
    const a = pos.get(d.parent), b = pos.get(d.child);
    if (!a || !b || d.parent === d.child) continue;
    const x1 = a.x + NW, y1 = a.y + NH / 2, x2 = b.x, y2 = b.y + NH / 2;
    const back = x2 <= x1;
    const path = back ? `M ${a.x + NW / 2} ${a.y + NH} C ${a.x + NW / 2} ${a.y + NH + 60}, ${b.x + NW / 2} ${b.y + NH + 60}, ${b.x + NW / 2} ${b.y + NH}`
      : `M ${x1} ${y1} C ${x1 + GX / 2} ${y1}, ${x2 - GX / 2} ${y2}, ${x2} ${y2}`;
    svg.appendChild(s('path', { d: path, class: 'edge', 'marker-end': 'url(#arrow)', style: { 'stroke-width': (1 + 3 * d.callCount / maxCalls).toFixed(1) } },
      s('title', { text: `${d.parent} → ${d.child}: ${d.callCount} calls` })));
    // Label near the callee, where edges fan in less than at a busy caller.
    svg.appendChild(s('text', { x: back ? b.x + NW / 2 + 14 : x2 - 16, y: back ? b.y + NH + 14 : y2 - 5, class: 'edge-label', 'text-anchor': 'middle', text: String(d.callCount) }));
  }
  for (const svc of services) {
    const { x, y } = pos.get(svc);
    const hl = health.get(svc);
    let cls = 'unknown';
    if (hl) cls = hl.errorRate < 0.01 ? 'ok' : hl.errorRate < 0.05 ? 'warn' : hl.errorRate < 0.2 ? 'bad' : 'crit';
    const a = s('a', { href: ctx.href('/search' + qs({ service: svc })), 'data-internal': true, class: 'node-link' },
      s('rect', { x, y, width: NW, height: NH, rx: 8, class: 'node ' + cls }),
      s('text', { x: x + NW / 2, y: y + (hl ? 18 : 27), 'text-anchor': 'middle', class: 'node-label', text: svc.length > 22 ? svc.slice(0, 21) + '…' : svc }),
      hl ? s('text', { x: x + NW / 2, y: y + 35, 'text-anchor': 'middle', class: 'node-sub', text: `${(hl.errorRate * 100).toFixed(1)}% err · p99 ${fmtDuration(hl.p99 * 1e6)}` }) : null,
      s('title', { text: svc }));
    svg.appendChild(a);
  }
  clear(el).appendChild(svg);
  if (!health.size) el.appendChild(note('Error rate and latency colour the nodes once the metrics API is available; edges show call counts from stored traces.', 'muted'));
}
