// Span details: IDs, timing, the clock-skew offset applied, status, kind,
// attributes, resource, events, links and scope.
import { h, clear, fmtDuration, valueText, copyButton, note } from './dom.js';
import { HEX16, HEX32 } from './api.js';

function kvTable(obj, cls) {
  const keys = Object.keys(obj || {}).sort();
  if (!keys.length) return note('none', 'muted');
  return h('table', { class: 'kv ' + (cls || '') },
    h('tbody', null, ...keys.map((k) => h('tr', null,
      h('th', { class: 'mono', text: k }),
      h('td', { class: 'mono value', text: valueText(obj[k]) })))));
}

function idRow(label, id) {
  return h('div', { class: 'id-row' }, h('span', { class: 'label', text: label }), h('code', { class: 'mono', text: id || '—' }), id ? copyButton(id) : null);
}

export function renderDetails(el, sp, model, ctx) {
  clear(el);
  if (!sp) {
    el.appendChild(note('Select a span (click, or j/k) to see its details.', 'muted'));
    return;
  }
  const d = sp.data;
  const status = d.status || { code: 'unset', message: '' };
  el.appendChild(h('header', { class: 'details-head' },
    h('h2', { id: 'details-title' }, h('span', { class: 'svc-dot', style: { '--svc': ctx.color(sp.service) } }), h('span', { text: sp.name || '(unnamed span)' })),
    h('div', { class: 'details-sub' },
      h('span', { class: 'svc', text: sp.service || 'unknown service' }), ' · ',
      h('span', { text: sp.kind || 'unspecified' }), ' · ',
      h('span', { class: 'status ' + status.code, id: 'details-status', text: status.code === 'error' ? 'ERROR' : status.code.toUpperCase() }),
      status.message ? h('span', { class: 'status-msg', text: ' — ' + status.message } ) : null)));

  const timing = h('dl', { class: 'timing' },
    h('dt', { text: 'Duration' }), h('dd', { text: fmtDuration(sp.dur) }),
    h('dt', { text: 'Starts at' }), h('dd', { text: '+' + fmtDuration(sp.start) + ' into the trace' }));
  if (sp.logical != null) timing.append(h('dt', { text: 'Logical time' }), h('dd', { text: String(sp.logical) }));
  el.appendChild(timing);
  if (sp.skew) {
    el.appendChild(h('p', { class: 'skew-note', id: 'details-skew' },
      h('strong', { text: 'Clock-skew offset ' + (sp.skew > 0 ? '+' : '') + fmtDuration(sp.skew) }),
      ctx.raw ? ' — raw times shown: this offset is NOT applied.' : ' applied: this span\'s host clock disagreed with its caller, so its times were shifted (raw start = shown start − offset). Toggle “raw times” to see them as received.'));
  }
  if (sp.orphan) el.appendChild(note('Parent span ' + (sp.parentId || '') + ' is missing from this trace.', 'warn-note'));

  el.appendChild(h('div', { class: 'ids' }, idRow('Span ID', sp.id), idRow('Parent', sp.parentId), idRow('Trace ID', ctx.traceID)));

  const section = (title, body, open = true) => h('details', { class: 'section', open }, h('summary', { text: title }), body);
  el.appendChild(section(`Attributes (${Object.keys(d.attributes || {}).length})`, kvTable(d.attributes, 'attrs')));
  el.appendChild(section(`Resource (${Object.keys(d.resource || {}).length})`, kvTable(d.resource), false));

  const events = d.events || [];
  el.appendChild(section(`Events (${events.length})`, events.length ? h('ul', { class: 'events' }, ...events.map((ev) => {
    let offset = '';
    try { offset = '+' + fmtDuration(Number(BigInt(ev.timeUnixNano) - model.t0)); } catch { offset = ''; }
    return h('li', { class: ev.name === 'exception' ? 'event exception' : 'event' },
      h('div', null, h('span', { class: 'mono muted', text: offset }), ' ', h('strong', { text: ev.name || '(event)' })),
      kvTable(ev.attributes));
  })) : note('none', 'muted'), events.length > 0));

  const links = d.links || [];
  el.appendChild(section(`Links (${links.length})`, links.length ? h('ul', { class: 'links' }, ...links.map((l) => {
    const ok = HEX32.test(l.traceID) && HEX16.test(l.spanID);
    const target = ok ? ctx.href(`/trace/${l.traceID.toLowerCase()}?span=${l.spanID.toLowerCase()}`) : null;
    return h('li', null,
      target ? h('a', { href: target, 'data-internal': true, class: 'mono', text: `${l.traceID} / ${l.spanID}` }) : h('code', { text: `${l.traceID} / ${l.spanID}` }),
      Object.keys(l.attributes || {}).length ? kvTable(l.attributes) : null);
  })) : note('none', 'muted'), links.length > 0));

  const scope = d.scope || {};
  el.appendChild(section('Instrumentation scope', h('p', { class: 'mono', text: `${scope.name || '—'} ${scope.version || ''}` }), false));
}
