// Trace model: relative times, the span tree in display order, and the
// critical path. Pure functions, no DOM.

export const SKEW = 'threadline.clock_skew_ns';
export const LOGICAL = 'threadline.logical_time';

function big(str) {
  try { return BigInt(str); } catch { return 0n; }
}

function numAttr(v) {
  if (typeof v === 'number') return v;
  if (typeof v === 'string' && /^-?\d+$/.test(v)) return Number(v);
  return null;
}

// buildModel turns the native trace JSON into spans with times relative to
// the trace start (nanoseconds as Numbers: exact for traces under 104 days).
// adjustedByID, when given, supplies the offsets and logical times of the
// adjusted trace while the raw trace (which no longer carries them) is
// displayed. A raw span that still carries the skew attribute
// was not undone by the server, so it is undone here (start − offset).
export function buildModel(data, { raw = false, adjustedByID = null } = {}) {
  const items = data.spans || [];
  const starts = [], ends = [];
  for (const sp of items) {
    let st = big(sp.startTimeUnixNano), en = big(sp.endTimeUnixNano);
    const attrs = sp.attributes || {};
    const off = numAttr(attrs[SKEW]);
    if (raw && off) { st -= BigInt(off); en -= BigInt(off); }
    if (en < st) en = st;
    starts.push(st); ends.push(en);
  }
  let t0 = null, t1 = null;
  for (let i = 0; i < items.length; i++) {
    if (t0 === null || starts[i] < t0) t0 = starts[i];
    if (t1 === null || ends[i] > t1) t1 = ends[i];
  }
  if (t0 === null) { t0 = 0n; t1 = 0n; }
  const spans = items.map((sp, i) => {
    const attrs = sp.attributes || {};
    let skew = numAttr(attrs[SKEW]), logical = numAttr(attrs[LOGICAL]);
    const adj = adjustedByID && adjustedByID.get(sp.spanID);
    if (adj) { skew = numAttr(adj[SKEW]); logical = numAttr(adj[LOGICAL]); }
    const start = Number(starts[i] - t0), end = Number(ends[i] - t0);
    return {
      data: sp, id: sp.spanID, parentId: sp.parentSpanID || '', name: sp.name || '', service: sp.service || '',
      kind: sp.kind, start, end, dur: end - start, error: sp.status && sp.status.code === 'error',
      skew: skew || 0, logical, children: [], parent: null, depth: 0, orphan: false,
    };
  });
  const byId = new Map();
  for (const sp of spans) if (!byId.has(sp.id)) byId.set(sp.id, sp);
  const roots = [];
  for (const sp of spans) {
    const parent = sp.parentId && byId.get(sp.parentId);
    if (parent && parent !== sp) { sp.parent = parent; parent.children.push(sp); } else {
      sp.orphan = !!sp.parentId;
      roots.push(sp);
    }
  }
  return { spans, byId, roots, t0, total: Math.max(Number(t1 - t0), 1), services: [...new Set(spans.map((x) => x.service))].sort() };
}

export function comparator(order) {
  if (order === 'logical') {
    return (a, b) => (a.logical ?? Infinity) - (b.logical ?? Infinity) || a.start - b.start || (a.id < b.id ? -1 : 1);
  }
  return (a, b) => a.start - b.start || (a.logical ?? 0) - (b.logical ?? 0) || (a.id < b.id ? -1 : 1);
}

// treeOrder sorts siblings and returns every span in depth-first order with
// its depth set. Spans caught in a parent cycle (never reachable from a root)
// are appended as extra roots, so malformed data cannot hide or loop.
export function treeOrder(model, order) {
  const cmp = comparator(order);
  for (const sp of model.spans) sp.children.sort(cmp);
  const roots = model.roots.slice().sort(cmp);
  const out = [];
  const seen = new Set();
  const walk = (root) => {
    const stack = [[root, 0]];
    while (stack.length) {
      const [sp, depth] = stack.pop();
      if (seen.has(sp)) continue;
      seen.add(sp);
      sp.depth = depth;
      out.push(sp);
      for (let i = sp.children.length - 1; i >= 0; i--) stack.push([sp.children[i], depth + 1]);
    }
  };
  for (const r of roots) walk(r);
  for (const sp of model.spans) if (!seen.has(sp)) { sp.orphan = true; walk(sp); }
  return out;
}

// visibleRows drops the descendants of collapsed spans from a tree order.
export function visibleRows(ordered, collapsed) {
  if (!collapsed.size) return ordered;
  const out = [];
  let skipDepth = -1;
  for (const sp of ordered) {
    if (skipDepth >= 0 && sp.depth > skipDepth) continue;
    skipDepth = -1;
    out.push(sp);
    if (collapsed.has(sp.id) && sp.children.length) skipDepth = sp.depth;
  }
  return out;
}

// criticalPath returns, per span ID, the intervals during which that span
// was what the request was waiting on: walking back from the root's end,
// the last-finishing child before the cursor takes over, recursively; the
// gaps are the parent's own time.
export function criticalPath(model) {
  const segs = new Map();
  if (!model.roots.length) return segs;
  let root = model.roots[0];
  for (const r of model.roots) if (r.end - r.start > root.end - root.start) root = r;
  const add = (sp, a, b) => {
    if (b <= a) return;
    let l = segs.get(sp.id);
    if (!l) { l = []; segs.set(sp.id, l); }
    l.push([a, b]);
  };
  const seen = new Set();
  const stack = [[root, root.end]];
  while (stack.length) {
    const [sp, bound] = stack.pop();
    if (seen.has(sp)) continue;
    seen.add(sp);
    let cursor = Math.min(sp.end, bound);
    const kids = sp.children.slice().sort((a, b) => b.end - a.end);
    for (const c of kids) {
      if (cursor <= sp.start) break;
      if (c.start >= cursor) continue;
      const cEnd = Math.min(c.end, cursor);
      if (cEnd <= sp.start) continue;
      add(sp, cEnd, cursor);
      stack.push([c, cEnd]);
      cursor = Math.max(c.start, sp.start);
    }
    add(sp, sp.start, cursor);
  }
  return segs;
}

// niceStep picks a ruler step (1, 2 or 5 × 10^n ns) giving about n ticks.
export function niceStep(total, n) {
  const raw = total / n;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}
