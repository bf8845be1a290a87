/**
 * The live view's page (session-view.ts serves it): one card per session,
 * newest first, each with its state and a uPlot chart of the segments
 * applied over time by lane (cumulative) and of the guest reads that were
 * held (how long each waited, right axis). It listens to
 * /sessions/events and redraws a card when its session changes.
 */

/** The page, as served. Plain HTML and a script; no build step. */
export function pageHtml(): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vmsynth: sessions</title>
<link rel="stylesheet" href="/sessions/uplot.css">
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
  h1 { font-size: 1.3em; margin: 0 0 .3em; }
  #status { color: #666; margin-bottom: 1em; }
  .card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .8em 1em; margin-bottom: 1em; }
  .card.ended { opacity: .65; }
  .head { display: flex; flex-wrap: wrap; gap: .4em 1.4em; align-items: baseline; }
  .id { font: 600 1.05em ui-monospace, monospace; }
  .tag { padding: 0 .5em; border-radius: 3px; background: #eee; }
  .tag.running { background: #d8f3dc; } .tag.detached { background: #fff3bf; }
  .tag.ended { background: #e9ecef; } .tag.died { background: #ffc9c9; }
  .err { color: #c92a2a; margin-top: .3em; }
  .nums span { margin-right: 1.2em; }
</style>
</head>
<body>
<h1>vmsynth: live sessions</h1>
<div id="status">connecting…</div>
<div id="sessions"></div>
<script src="/sessions/uplot.js"></script>
<script>
const LANES = ['background', 'demand', 'hurried', 'store', 'object'];
const COLORS = ['#868e96', '#e8590c', '#c2255c', '#2f9e44', '#1971c2'];
const sessions = new Map();
const charts = new Map();
const token = new URLSearchParams(location.search).get('token');
const box = document.getElementById('sessions');
const status = document.getElementById('status');

const ms = (v) => (v === null || v === undefined ? '–' : v < 1000 ? v + ' ms' : (v / 1000).toFixed(2) + ' s');
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);

function chartData(s) {
  const xs = [...new Set([0, ...s.arrivals.t, ...s.held.t])].sort((a, b) => a - b);
  const series = LANES.map(() => new Array(xs.length).fill(0));
  const held = new Array(xs.length).fill(null);
  const at = new Map(xs.map((x, i) => [x, i]));
  s.arrivals.t.forEach((t, k) => { series[s.arrivals.lane[k]][at.get(t)]++; });
  for (const col of series) for (let i = 1; i < col.length; i++) col[i] += col[i - 1];
  // A lane stays off the chart until its first segment (no line along the axis).
  for (const col of series) for (let i = 0; i < col.length && col[i] === 0; i++) col[i] = null;
  s.held.t.forEach((t, k) => { const i = at.get(t); held[i] = Math.max(held[i] ?? 0, s.held.ms[k]); });
  return [xs.map((x) => x / 1000), ...series, held];
}

function render(s) {
  let card = document.getElementById('s-' + s.id);
  if (!card) {
    card = document.createElement('div');
    card.id = 's-' + s.id;
    card.className = 'card';
    card.innerHTML = '<div class="head"></div><div class="nums"></div><div class="err"></div><div class="chart"></div>';
    box.prepend(card);
  }
  card.className = 'card ' + s.state;
  card.dataset.segments = String(s.arrivals.t.length);
  card.dataset.state = s.state;
  card.dataset.vm = s.vm;
  const vmTag = s.vm === 'died' ? 'died' : s.vm === 'running' ? 'running' : 'ended';
  card.querySelector('.head').innerHTML =
    '<span class="id">' + esc(s.id) + '</span>' +
    '<span>client ' + esc(s.client || 'anonymous') + ' · ' + esc(s.peer) + '</span>' +
    '<span>' + esc(s.policy) + ' on ' + esc(s.base) + '</span>' +
    '<span class="tag ' + esc(s.state) + '">session ' + esc(s.state) + '</span>' +
    '<span class="tag ' + vmTag + '">VM ' + esc(s.vm) + '</span>' +
    (s.adopted ? '<span class="tag">adopted after a server restart</span>' : '');
  const heldMax = s.held.ms.length ? Math.max(...s.held.ms) : null;
  const byLane = LANES.map((l, i) => l + ' ' + s.arrivals.lane.filter((x) => x === i).length).join(', ');
  card.querySelector('.nums').innerHTML =
    '<span>VM running at ' + ms(s.resumedMs) + '</span>' +
    '<span class="first">first response ' + ms(s.firstResponseMs) + '</span>' +
    '<span>overlay complete ' + ms(s.completeMs) + '</span>' +
    '<span class="segs">segments ' + s.arrivals.t.length + ' of ' + s.segments + ' (' + byLane + ')</span>' +
    '<span>reads held ' + s.held.t.length + (heldMax !== null ? ', longest ' + ms(heldMax) : '') + '</span>' +
    '<span>reconnects ' + s.reconnects.length + '</span>';
  card.querySelector('.err').textContent = s.error ? s.error.code + ': ' + s.error.message : '';
  const data = chartData(s);
  const old = charts.get(s.id);
  if (old) { old.setData(data); return; }
  const opts = {
    width: Math.min(900, box.clientWidth - 30), height: 220,
    scales: { x: { time: false }, held: { auto: true } },
    axes: [
      { label: 'seconds since the session started' },
      { label: 'segments applied' },
      { scale: 'held', side: 1, label: 'held read (ms)', grid: { show: false } },
    ],
    series: [
      {},
      ...LANES.map((l, i) => ({ label: l, stroke: COLORS[i], width: 2, points: { show: false }, paths: uPlot.paths.stepped({ align: 1 }) })),
      { label: 'held read', scale: 'held', stroke: '#000', paths: () => null, points: { show: true, size: 6, fill: '#000' } },
    ],
  };
  charts.set(s.id, new uPlot(opts, data, card.querySelector('.chart')));
}

function take(list) {
  for (const s of list) { sessions.set(s.id, s); render(s); }
  const live = [...sessions.values()].filter((s) => s.state !== 'ended').length;
  status.textContent = live + ' live session(s), ' + (sessions.size - live) + ' ended · updated ' + new Date().toLocaleTimeString();
  document.body.dataset.sessions = String(sessions.size);
}

const es = new EventSource('/sessions/events' + (token ? '?token=' + encodeURIComponent(token) : ''));
es.addEventListener('snapshot', (e) => take(JSON.parse(e.data).sessions.reverse()));
es.addEventListener('update', (e) => take(JSON.parse(e.data).sessions));
es.onerror = () => { status.textContent = 'reconnecting to the server…'; };
</script>
</body>
</html>
`;
}
