// Trace view: the waterfall. Rows are virtualised (only those in view, plus
// a margin, exist in the DOM), so a 10k-span trace scrolls as smoothly as a
// 10-span one; a minimap shows the whole trace and scrolls on click or drag.
import { h, s, clear, fmtDuration, fmtTime, serviceColor, copyButton, note } from './dom.js';
import { getJSON, HEX32 } from './api.js';
import { buildModel, treeOrder, visibleRows, criticalPath, niceStep } from './model.js';
import { renderDetails } from './details.js';
import { LogsPane } from './logs.js';

const ROW_H = 26;
const OVERSCAN = 10;
const MINIMAP_MIN_ROWS = 40;

export function render(root, ctx) {
  const ctrl = new AbortController();
  const p = ctx.params;
  const st = {
    traceID: (ctx.traceID || '').toLowerCase(),
    raw: p.get('raw') === '1' || p.get('raw') === 'true',
    order: p.get('order') === 'logical' ? 'logical' : 'time',
    showCP: p.get('cp') !== '0',
    model: null, ordered: [], rows: [], collapsed: new Set(), cp: new Map(),
    selected: p.get('span') || null, find: '', matches: [],
  };
  const view = h('section', { class: 'view trace-view' });
  root.appendChild(view);
  if (!HEX32.test(st.traceID)) {
    view.appendChild(note('"' + ctx.traceID + '" is not a trace ID (32 hex digits).', 'error-note'));
    return { destroy: () => ctrl.abort() };
  }
  view.appendChild(note('Loading trace ' + st.traceID + '…'));

  const api = { destroy: () => { ctrl.abort(); window.removeEventListener('resize', onResize); }, onKey: () => false };
  let onResize = () => {};

  (async () => {
    let data, adjusted;
    try {
      const base = `/api/v1/traces/${st.traceID}`;
      if (st.raw) {
        // Offsets and logical times come from the adjusted trace: raw spans
        // no longer carry them.
        [data, adjusted] = await Promise.all([getJSON(base + '?raw=true', { signal: ctrl.signal }), getJSON(base, { signal: ctrl.signal })]);
      } else {
        data = await getJSON(base, { signal: ctrl.signal });
      }
    } catch (err) {
      if (ctrl.signal.aborted) return;
      clear(view).appendChild(note(err.status === 404 ? `Trace ${st.traceID} not found.` : 'Could not load the trace: ' + err.message, 'error-note'));
      return;
    }
    let adjustedByID = null;
    if (adjusted) {
      adjustedByID = new Map();
      for (const sp of adjusted.spans || []) adjustedByID.set(sp.spanID, sp.attributes || {});
    }
    st.model = buildModel(data, { raw: st.raw, adjustedByID });
    st.data = data;
    build(view, st, ctx, ctrl, api, (fn) => { onResize = fn; window.addEventListener('resize', fn); });
  })();
  return api;
}

function build(view, st, ctx, ctrl, api, setResize) {
  const m = st.model;
  clear(view);
  const rootSpan = m.roots.slice().sort((a, b) => a.start - b.start)[0];
  const errors = m.spans.filter((x) => x.error).length;
  const skewed = m.spans.filter((x) => x.skew).length;
  const color = (svc) => serviceColor(svc);

  // Header.
  const rawToggle = h('input', { type: 'checkbox', id: 't-raw', checked: st.raw });
  rawToggle.addEventListener('change', () => ctx.navigate(pathWith({ raw: rawToggle.checked ? '1' : '' }), { replace: true }));
  const orderSel = h('select', { id: 't-order', title: 'Order siblings by' },
    h('option', { value: 'time', text: 'order: wall-clock time', selected: st.order === 'time' }),
    h('option', { value: 'logical', text: 'order: logical (causal) time', selected: st.order === 'logical' }));
  orderSel.addEventListener('change', () => { st.order = orderSel.value; ctx.setParams({ order: st.order === 'logical' ? 'logical' : '' }); relayout(); });
  const cpToggle = h('input', { type: 'checkbox', id: 't-cp', checked: st.showCP });
  cpToggle.addEventListener('change', () => { st.showCP = cpToggle.checked; ctx.setParams({ cp: st.showCP ? '' : '0' }); drawRows(true); });
  const findInput = h('input', { type: 'search', id: 't-find', placeholder: 'Find span (/)', 'data-focus-search': true, autocomplete: 'off', spellcheck: 'false' });
  const findCount = h('span', { class: 'muted', id: 't-find-count' });
  findInput.addEventListener('input', () => { st.find = findInput.value.trim().toLowerCase(); computeMatches(); drawRows(true); });
  findInput.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && st.matches.length) {
      ev.preventDefault();
      const cur = st.matches.indexOf(st.selected);
      selectSpan(st.matches[(cur + 1) % st.matches.length], { scroll: true, expand: true });
    }
  });
  const btn = (text, id, fn) => { const b = h('button', { type: 'button', class: 'ghost', id, text }); b.addEventListener('click', fn); return b; };

  const head = h('header', { class: 'trace-head' },
    h('div', { class: 'title-row' },
      h('a', { href: ctx.href('/search'), 'data-internal': true, class: 'back nav-only', text: '← Search' }),
      h('h1', { id: 'trace-title' },
        h('span', { class: 'svc', text: rootSpan ? rootSpan.service : '' }), ': ',
        h('span', { text: rootSpan ? rootSpan.name : '(no spans)' })),
      h('span', { class: 'big-dur', id: 'trace-duration', text: fmtDuration(m.total) })),
    h('div', { class: 'meta-row' },
      h('code', { class: 'mono', id: 'trace-id', text: st.traceID }), copyButton(st.traceID, 'copy ID'),
      h('span', { text: fmtTime(Number(m.t0 / 1000000n)) }),
      h('span', { text: `${m.spans.length} spans` }),
      h('span', { text: `${m.services.length} services` }),
      errors ? h('span', { class: 'badge error', id: 'trace-errors', text: `${errors} error span${errors === 1 ? '' : 's'}` }) : null,
      skewed ? h('span', { class: 'badge skew', title: 'Spans whose times were shifted to repair clock skew', text: `${skewed} skew-adjusted` }) : null,
      ...(st.data.keptReasons || []).map((r) => h('span', { class: 'chip reason', title: 'Why this trace was kept', text: 'kept: ' + r })),
      st.raw ? h('span', { class: 'badge raw', text: 'RAW TIMES (as received)' }) : null),
    ...(st.data.warnings || []).map((w) => note(w, 'warn-note')),
    h('div', { class: 'toolbar' },
      h('label', { class: 'check', title: 'Show span times as received, without clock-skew repair' }, rawToggle, 'raw times'),
      orderSel,
      h('label', { class: 'check' }, cpToggle, 'critical path'),
      btn('Expand all', 't-expand', () => { st.collapsed.clear(); relayout(); }),
      btn('Collapse all', 't-collapse', () => { for (const x of m.spans) if (x.children.length && x.depth > 0) st.collapsed.add(x.id); relayout(); }),
      findInput, findCount,
      h('span', { class: 'spacer' }),
      h('span', { class: 'legend', id: 'legend' }, ...m.services.map((sv) => h('span', { class: 'legend-item' },
        h('span', { class: 'svc-dot', style: { '--svc': color(sv) } }), h('span', { text: sv || 'unknown' }))))));

  // Waterfall.
  const minimap = h('canvas', { class: 'minimap-canvas', id: 'minimap', height: 48 });
  const mmWindow = h('div', { class: 'minimap-window' });
  const mmWrap = h('div', { class: 'minimap', title: 'Minimap: click or drag to scroll' }, minimap, mmWindow);
  const ruler = h('div', { class: 'ruler-time', id: 'ruler' });
  const rulerRow = h('div', { class: 'ruler' }, h('div', { class: 'ruler-name', text: 'Service · operation' }), ruler);
  const grid = h('div', { class: 'grid-lines' });
  const spacer = h('div', { class: 'rows-spacer', id: 'rows-spacer' }, grid);
  const scroller = h('div', { class: 'rows-scroll', id: 'rows-scroll', tabindex: 0 }, spacer);
  const waterfall = h('div', { class: 'waterfall', id: 'waterfall' }, mmWrap, rulerRow, scroller);

  const details = h('section', { class: 'details', id: 'span-details' });
  const logsEl = h('section', { class: 'logs', id: 'logs-pane' });
  const side = h('aside', { class: 'side' }, details, logsEl);
  view.append(head, h('div', { class: 'trace-body' }, waterfall, side));

  const logs = new LogsPane(logsEl, { traceID: st.traceID, signal: ctrl.signal, onJump: (id) => selectSpan(id, { scroll: true, expand: true }) });
  logs.load(m.t0);

  // Ruler ticks and grid lines share positions.
  const step = niceStep(m.total, 6);
  for (let t = 0; t <= m.total + 1; t += step) {
    const left = (t / m.total * 100) + '%';
    ruler.appendChild(h('span', { class: 'tick', style: { left }, text: fmtDuration(t) }));
    grid.appendChild(h('div', { class: 'grid-line', style: { left } }));
  }

  function pathWith(params) {
    const q = new URLSearchParams(location.search);
    for (const [k, v] of Object.entries(params)) { if (v) q.set(k, v); else q.delete(k); }
    const qs = q.toString();
    return location.pathname + (qs ? '?' + qs : '');
  }

  function computeMatches() {
    st.matches = [];
    if (st.find) {
      for (const sp of st.ordered) {
        const hay = (sp.name + ' ' + sp.service + ' ' + sp.id + ' ' + JSON.stringify(sp.data.attributes || {})).toLowerCase();
        if (hay.includes(st.find)) st.matches.push(sp.id);
      }
    }
    st.matchSet = new Set(st.matches);
    findCount.textContent = st.find ? `${st.matches.length} match${st.matches.length === 1 ? '' : 'es'}` : '';
  }

  function relayout() {
    st.ordered = treeOrder(m, st.order);
    st.rows = visibleRows(st.ordered, st.collapsed);
    st.index = new Map(st.rows.map((sp, i) => [sp.id, i]));
    spacer.style.height = (st.rows.length * ROW_H) + 'px';
    mmWrap.hidden = st.rows.length < MINIMAP_MIN_ROWS && m.spans.length < MINIMAP_MIN_ROWS;
    computeMatches();
    drawMinimap();
    drawRows(true);
  }

  let lastRange = '';
  function drawRows(force) {
    const top = scroller.scrollTop, height = scroller.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(st.rows.length, Math.ceil((top + height) / ROW_H) + OVERSCAN);
    const key = first + ':' + last;
    if (!force && key === lastRange) { positionWindow(); return; }
    lastRange = key;
    for (const el of [...spacer.querySelectorAll('.span-row')]) el.remove();
    const frag = document.createDocumentFragment();
    for (let i = first; i < last; i++) frag.appendChild(rowEl(st.rows[i], i));
    spacer.appendChild(frag);
    positionWindow();
  }

  function rowEl(sp, i) {
    const hasKids = sp.children.length > 0;
    const collapsed = st.collapsed.has(sp.id);
    const toggle = hasKids
      ? h('button', { type: 'button', class: 'toggle ghost', title: collapsed ? 'Expand' : 'Collapse', 'aria-expanded': String(!collapsed), text: collapsed ? '▸' : '▾' })
      : h('span', { class: 'toggle-space' });
    if (hasKids) toggle.addEventListener('click', (ev) => { ev.stopPropagation(); toggleSpan(sp.id); });
    const name = h('div', { class: 'name-cell', style: { 'padding-left': (Math.min(sp.depth, 30) * 12 + 4) + 'px' } },
      toggle,
      h('span', { class: 'svc-dot', style: { '--svc': serviceColor(sp.service) } }),
      h('span', { class: 'svc', text: sp.service || 'unknown' }),
      h('span', { class: 'op', text: sp.name }),
      sp.error ? h('span', { class: 'err-mark', title: 'Error status' + (sp.data.status && sp.data.status.message ? ': ' + sp.data.status.message : ''), text: '⚠' }) : null,
      sp.skew ? h('span', { class: 'skew-badge', title: `Clock-skew offset ${st.raw ? 'not applied (raw times)' : 'applied'}`, text: `skew ${sp.skew > 0 ? '+' : ''}${fmtDuration(sp.skew)}` }) : null,
      st.order === 'logical' && sp.logical != null ? h('span', { class: 'logical', title: 'Logical (causal) timestamp', text: '#' + sp.logical }) : null,
      collapsed ? h('span', { class: 'muted hidden-count', text: `(+${countDesc(sp)})` }) : null,
      sp.orphan ? h('span', { class: 'muted', title: 'Parent span not in this trace', text: '(orphan)' }) : null);
    const left = sp.start / m.total * 100, width = sp.dur / m.total * 100;
    const bar = h('div', { class: ['bar', sp.error ? 'error' : ''], style: { left: left + '%', width: width + '%', '--svc': serviceColor(sp.service) } });
    const segs = st.showCP ? st.cp.get(sp.id) : null;
    if (segs && sp.dur > 0) {
      for (const [a, b] of segs) {
        bar.appendChild(h('div', { class: 'cp', style: { left: ((a - sp.start) / sp.dur * 100) + '%', width: ((b - a) / sp.dur * 100) + '%' } }));
      }
    }
    // The duration label goes inside a wide bar, else beside it on the side
    // with room, so it never spills into the name column.
    let labelCls, labelPos;
    if (width > 14) { labelCls = 'inside'; labelPos = { left: left + '%' }; }
    else if (left + width < 80) { labelCls = 'right'; labelPos = { left: (left + width) + '%' }; }
    else { labelCls = 'left'; labelPos = { right: (100 - left) + '%' }; }
    const label = h('span', { class: ['bar-label', labelCls], style: labelPos, text: fmtDuration(sp.dur) });
    const timeline = h('div', { class: 'timeline-cell' }, bar, label);
    const row = h('div', {
      class: ['span-row', sp.id === st.selected ? 'selected' : '', sp.error ? 'error' : '', segs && st.showCP ? 'on-cp' : '', st.matchSet && st.matchSet.has(sp.id) ? 'match' : ''],
      style: { top: (i * ROW_H) + 'px' }, dataset: { spanId: sp.id, index: i, depth: sp.depth }, role: 'row',
    }, name, timeline);
    row.addEventListener('click', () => selectSpan(sp.id, { scroll: false }));
    row.addEventListener('dblclick', () => { if (hasKids) toggleSpan(sp.id); });
    return row;
  }

  function countDesc(sp) {
    let n = 0;
    const stack = [...sp.children];
    while (stack.length) { const x = stack.pop(); n++; stack.push(...x.children); }
    return n;
  }

  function toggleSpan(id) {
    if (st.collapsed.has(id)) st.collapsed.delete(id); else st.collapsed.add(id);
    const prevTop = scroller.scrollTop;
    relayout();
    scroller.scrollTop = prevTop;
  }

  function selectSpan(id, { scroll = true, expand = false } = {}) {
    const sp = m.byId.get(id);
    if (!sp) return;
    if (expand) {
      let changed = false;
      for (let a = sp.parent; a; a = a.parent) if (st.collapsed.delete(a.id)) changed = true;
      if (changed) relayout();
    }
    st.selected = id;
    ctx.setParams({ span: id });
    if (scroll) scrollToRow(st.index.get(id));
    drawRows(true);
    renderDetails(details, sp, m, { ...ctx, color, raw: st.raw, traceID: st.traceID });
    logs.setSpan(id);
  }

  function scrollToRow(i) {
    if (i === undefined) return;
    const top = i * ROW_H, height = scroller.clientHeight;
    if (top < scroller.scrollTop || top + ROW_H > scroller.scrollTop + height) scroller.scrollTop = Math.max(0, top - height / 3);
  }

  // Minimap.
  function drawMinimap() {
    if (mmWrap.hidden) return;
    const dpr = window.devicePixelRatio || 1;
    const w = minimap.clientWidth || 800, hh = 48;
    minimap.width = Math.round(w * dpr); minimap.height = Math.round(hh * dpr);
    const g = minimap.getContext('2d');
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, hh);
    const n = st.rows.length || 1;
    const rh = Math.max(hh / n, 0.5);
    st.rows.forEach((sp, i) => {
      g.fillStyle = sp.error ? '#d62728' : serviceColor(sp.service);
      g.fillRect(sp.start / m.total * w, i / n * hh, Math.max(sp.dur / m.total * w, 1), rh);
    });
  }
  function positionWindow() {
    if (mmWrap.hidden) return;
    const total = st.rows.length * ROW_H || 1;
    mmWindow.style.top = (scroller.scrollTop / total * 100) + '%';
    mmWindow.style.height = Math.max(scroller.clientHeight / total * 100, 4) + '%';
  }
  let dragging = false;
  const mmScroll = (ev) => {
    const r = mmWrap.getBoundingClientRect();
    const frac = Math.min(Math.max((ev.clientY - r.top) / r.height, 0), 1);
    scroller.scrollTop = frac * st.rows.length * ROW_H - scroller.clientHeight / 2;
  };
  mmWrap.addEventListener('mousedown', (ev) => { dragging = true; mmScroll(ev); ev.preventDefault(); });
  const onMove = (ev) => { if (dragging) mmScroll(ev); };
  const onUp = () => { dragging = false; };
  window.addEventListener('mousemove', onMove);
  window.addEventListener('mouseup', onUp);

  let raf = 0;
  scroller.addEventListener('scroll', () => {
    if (raf) return;
    raf = requestAnimationFrame(() => { raf = 0; drawRows(false); });
  });
  setResize(() => { drawMinimap(); drawRows(true); });

  // Keyboard: j/k or arrows move, Enter toggles, ←/→ collapse/expand.
  api.onKey = (ev) => {
    const i = st.selected != null ? st.index.get(st.selected) : undefined;
    const move = (d) => {
      const next = i === undefined ? 0 : Math.min(Math.max(i + d, 0), st.rows.length - 1);
      if (st.rows[next]) selectSpan(st.rows[next].id, { scroll: true });
    };
    switch (ev.key) {
      case 'j': case 'ArrowDown': move(1); return true;
      case 'k': case 'ArrowUp': move(-1); return true;
      case 'Enter': if (st.selected && m.byId.get(st.selected).children.length) toggleSpan(st.selected); return true;
      case 'ArrowLeft': if (st.selected && !st.collapsed.has(st.selected) && m.byId.get(st.selected).children.length) toggleSpan(st.selected); return true;
      case 'ArrowRight': if (st.selected && st.collapsed.has(st.selected)) toggleSpan(st.selected); return true;
      default: return false;
    }
  };
  const prevDestroy = api.destroy;
  api.destroy = () => { prevDestroy(); window.removeEventListener('mousemove', onMove); window.removeEventListener('mouseup', onUp); };

  st.cp = criticalPath(m);
  relayout();
  if (st.selected && m.byId.has(st.selected)) {
    selectSpan(st.selected, { scroll: true, expand: true });
  } else {
    st.selected = null;
    renderDetails(details, null, m, ctx);
    logs.setSpan(null);
  }
  // Expose a tiny read-only hook for tests and debugging.
  view.dataset.spanCount = String(m.spans.length);
  view.dataset.ready = '1';
}
