// Logs pane: the trace's log lines in time order, filtered to the selected
// span and a minimum level; each line jumps to its span. The correlation API
// may not exist yet: its 404 means "no logs store", shown as a note.
import { h, clear, fmtDuration, note } from './dom.js';
import { getJSON } from './api.js';

export const LEVELS = [['TRACE', 1], ['DEBUG', 5], ['INFO', 9], ['WARN', 13], ['ERROR', 17], ['FATAL', 21]];

function levelName(l) {
  if (l.severityText) return l.severityText.toUpperCase();
  const n = l.severityNumber || 0;
  let name = 'UNSET';
  for (const [ln, v] of LEVELS) if (n >= v) name = ln;
  return name;
}

function levelClass(n) {
  if (n >= 17) return 'lvl-error';
  if (n >= 13) return 'lvl-warn';
  if (n >= 9) return 'lvl-info';
  return 'lvl-debug';
}

export class LogsPane {
  constructor(el, { traceID, onJump, signal }) {
    this.el = el;
    this.traceID = traceID;
    this.onJump = onJump;
    this.signal = signal;
    this.logs = null;
    this.state = 'loading';
    this.message = '';
    this.span = null;
    this.onlySpan = true;
    this.minLevel = 0;
    this.t0 = 0n;
    this.build();
  }

  build() {
    this.level = h('select', { id: 'log-level', title: 'Minimum level' },
      h('option', { value: '0', text: 'all levels' }),
      ...LEVELS.map(([n, v]) => h('option', { value: String(v), text: n + '+' })));
    this.level.addEventListener('change', () => { this.minLevel = Number(this.level.value); this.draw(); });
    this.scope = h('input', { type: 'checkbox', id: 'log-only-span', checked: true });
    this.scope.addEventListener('change', () => { this.onlySpan = this.scope.checked; this.draw(); });
    this.count = h('span', { class: 'muted', id: 'log-count' });
    this.list = h('ol', { class: 'log-lines', id: 'log-lines' });
    this.el.append(h('header', { class: 'logs-head' },
      h('h3', { text: 'Logs' }), this.count, h('span', { class: 'spacer' }),
      h('label', { class: 'check' }, this.scope, 'selected span only'), this.level), this.list);
  }

  async load(t0) {
    this.t0 = t0;
    try {
      const res = await getJSON(`/api/v1/traces/${encodeURIComponent(this.traceID)}/logs`, { signal: this.signal });
      const logs = (res && res.logs) || [];
      const key = (l) => { try { return BigInt(l.timeUnixNano || '0'); } catch { return 0n; } };
      for (const l of logs) l._t = key(l);
      logs.sort((a, b) => (a._t < b._t ? -1 : a._t > b._t ? 1 : 0));
      this.logs = logs;
      this.state = 'ok';
    } catch (err) {
      if (this.signal.aborted) return;
      if (err.status === 404) { this.state = 'none'; } else { this.state = 'error'; this.message = err.message; }
    }
    this.draw();
  }

  setSpan(id) { this.span = id; this.draw(); }

  draw() {
    clear(this.list);
    if (this.state === 'loading') { this.list.appendChild(h('li', { class: 'muted', text: 'Loading logs…' })); return; }
    if (this.state === 'none') {
      this.count.textContent = '';
      this.list.appendChild(h('li', { class: 'muted', id: 'logs-none', text: 'No logs store yet: log lines correlated with this trace will appear here once the logs API is available.' }));
      return;
    }
    if (this.state === 'error') { this.list.appendChild(h('li', { class: 'error-note', text: 'Logs unavailable: ' + this.message })); return; }
    const lines = this.logs.filter((l) => (this.minLevel === 0 || (l.severityNumber || 0) >= this.minLevel) &&
      (!this.onlySpan || !this.span || l.spanID === this.span));
    this.count.textContent = `${lines.length} of ${this.logs.length}`;
    if (!lines.length) {
      this.list.appendChild(h('li', { class: 'muted', text: this.logs.length ? 'No lines match (span or level filter).' : 'No log lines for this trace.' }));
      return;
    }
    for (const l of lines.slice(0, 2000)) {
      const n = l.severityNumber || 0;
      const li = h('li', { class: ['log-line', levelClass(n), l.spanID === this.span ? 'current' : ''], dataset: { spanId: l.spanID || '' }, tabindex: 0, title: l.spanID ? 'Jump to span ' + l.spanID : '' },
        h('span', { class: 'mono muted log-time', text: '+' + fmtDuration(Number(l._t - this.t0)) }),
        h('span', { class: 'lvl', text: levelName(l) }),
        h('span', { class: 'log-svc', text: l.serviceName || '' }),
        h('span', { class: 'log-body', text: typeof l.body === 'string' ? l.body : JSON.stringify(l.body) }));
      const jump = () => { if (l.spanID) this.onJump(l.spanID); };
      li.addEventListener('click', jump);
      li.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') { ev.stopPropagation(); jump(); } });
      this.list.appendChild(li);
    }
  }
}
