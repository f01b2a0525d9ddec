// Syncline operator dashboard: plain JavaScript against the operator API.
// Every request carries the bearer token; progress streams use a ticket
// (EventSource cannot send headers). Text reaches the page only through
// textContent, never as HTML.
import uPlot from '/vendor/uplot.esm.js';

const REFRESH_MS = 10_000;
const TREND_REFRESH_MS = 60_000;
const TOAST_MS = 5000;
// More toasts than this at once hide the page: the oldest go first.
const MAX_TOASTS = 3;
const TOKEN_KEY = 'syncline.token';
const NAME_KEY = 'syncline.name';

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) ?? '',
  name: localStorage.getItem(NAME_KEY) ?? '',
  entities: [],
  config: [],
  /** the pressed range button: auto (fitted to the runs), hour (48 h) or day (30 d) */
  range: 'auto',
  /** what the charts show: { granularity, buckets } (buckets: the last n of the API's window, or all) */
  view: { granularity: 'hour', buckets: null },
  /** the latest trend request: an older answer arriving late is dropped */
  trendSeq: 0,
  trendEntity: '',
  /** entity → latest progress of a run followed over SSE */
  live: new Map(),
  /** run id → EventSource */
  streams: new Map(),
  /** run ids started from this page: their result stays shown until dismissed */
  mine: new Set(),
  charts: [],
  timers: [],
};

// ------------------------------------------------------------------ helpers

const $ = (sel, root = document) => root.querySelector(sel);

/** An element with attributes and children; strings become text nodes. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

const nf = new Intl.NumberFormat();
const fmt = (n) => (n === null || n === undefined ? '–' : nf.format(n));

function human(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min`;
  const hr = Math.round(s / 3600);
  if (hr < 48) return `${hr} h`;
  return `${Math.round(s / 86400)} d`;
}
const since = (iso) => (iso ? (Date.now() - new Date(iso).getTime()) / 1000 : null);
const ago = (iso) => (iso ? `${human(since(iso))} ago` : 'never');
const until = (iso) => (iso ? `in ${human(-since(iso))}` : '–');
const localTime = (iso) => (iso ? new Date(iso).toLocaleString() : '');
const pct = (v) => (v === null || v === undefined ? '–' : `${v >= 100 ? 100 : Math.floor(v * 10) / 10}%`);
const duration = (s) => (s === null || s === undefined ? '' : s < 1 ? `${Math.round(s * 1000)} ms` : s < 10 ? `${s.toFixed(1)} s` : human(s));

/** Postgres' interval text ("00:05:00", "1 day") as people say it ("5 min", "1 d"). */
function intervalText(text) {
  const m = /^(?:(\d+) days? ?)?(?:(\d+):(\d+):(\d+))?$/.exec(text ?? '');
  if (!m) return text;
  return human(Number(m[1] ?? 0) * 86400 + Number(m[2] ?? 0) * 3600 + Number(m[3] ?? 0) * 60 + Number(m[4] ?? 0));
}
const changesText = (c) => (c.inserted || c.updated || c.deleted ? `+${fmt(c.inserted ?? 0)} ~${fmt(c.updated ?? 0)} −${fmt(c.deleted ?? 0)}` : 'no changes');

function toast(text, kind = '') {
  const el = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  const box = $('#toasts');
  box.append(el);
  while (box.children.length > MAX_TOASTS) box.firstElementChild.remove();
  setTimeout(() => el.remove(), TOAST_MS);
}

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error ?? `HTTP ${status}`);
    this.status = status;
    this.hint = body?.hint;
    this.field = body?.field;
  }
}

/** A request with the token. A refused token signs out, except while signing in (`probe`). */
async function api(path, { method = 'GET', body, probe = false } = {}) {
  const res = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${state.token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => null);
  if (res.status === 401 && !probe) signOut('The token was refused: sign in again with the current one.');
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

const failed = (what) => (err) => toast(`${what}: ${err.message}${err.hint ? ` — ${err.hint}` : ''}`, 'error');

// ------------------------------------------------------------------ sign in

function showLogin(message) {
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login-token').value = state.token;
  const err = $('#login-error');
  err.hidden = !message;
  err.textContent = message ?? '';
  $('#login-token').focus();
}

const REFUSED = {
  typed: 'That token was refused. Use the token set in SYNCLINE_API_TOKEN, or the one the server printed at start.',
  // A generated token lasts one server process: an old link is the usual cause.
  link: 'The token in that link was refused: the server makes a new one each time it starts (unless SYNCLINE_API_TOKEN is set). '
    + 'Open the "sign in directly" link it printed last, or enter the token.',
  kept: 'The token of this tab was refused (the server may have restarted with a new one): enter the current token.',
};

/** Checks the token with the server, then opens the dashboard; a refused token shows the sign-in form and why. */
async function enter(token, how) {
  state.token = token;
  try {
    await api('/api/sync/status', { probe: true });
  } catch (err) {
    if (err.status !== 401) return showLogin(`The server did not answer: ${err.message}`);
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = '';
    return showLogin(REFUSED[how]);
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
}

function signIn(event) {
  event.preventDefault();
  const token = $('#login-token').value.trim();
  if (!token) return showLogin('Enter the API token.');
  return enter(token, 'typed');
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = '';
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  for (const es of state.streams.values()) es.close();
  state.streams.clear();
  showLogin(message);
}

// ------------------------------------------------------------------ summary and health

function card(k, v, s, tone = '') {
  // tone: good, warn or bad, shown as the card's top edge and its note.
  return h('div', { class: `card ${tone}` }, h('div', { class: 'k' }, k), h('div', { class: 'v' }, v), h('div', { class: 's', title: s }, s));
}

/** Success rate over all entities, weighted by their runs. */
function overallRate(rows, rate, runs) {
  let ok = 0;
  let n = 0;
  for (const r of rows) if (r[rate] !== null && r[runs]) { ok += r[rate] * r[runs]; n += r[runs]; }
  return n ? ok / n : null;
}

function renderCards(alerts) {
  const rows = state.entities;
  const count = (st) => rows.filter((r) => shownState(r) === st).length;
  const failing = count('failing') + count('stalled');
  const stale = rows.filter((r) => r.stale && r.enabled).length;
  const critical = alerts.filter((a) => a.severity === 'critical').length;
  const gaps = rows.reduce((a, r) => a + r.open_gaps, 0);
  const quarantined = rows.reduce((a, r) => a + r.quarantined_records, 0);
  const worst = rows.filter((r) => r.lag_seconds !== null && r.enabled).sort((a, b) => b.lag_seconds - a.lag_seconds)[0];
  const r24 = overallRate(rows, 'success_rate_24h', 'runs_24h');
  const r7 = overallRate(rows, 'success_rate_7d', 'runs_7d');
  const tone = (v) => (v === null ? '' : v >= 99 ? 'good' : v >= 90 ? 'warn' : 'bad');
  $('#cards').replaceChildren(
    card('Healthy entities', `${fmt(count('ok') + count('running'))} / ${fmt(rows.length)}`,
      [count('failing') ? `${count('failing')} failing` : '', count('stalled') ? `${count('stalled')} stalled` : '', count('cancelled') ? `${count('cancelled')} cancelled` : '', `${count('running')} running`]
        .filter(Boolean).join(' · '), failing ? 'bad' : 'good'),
    card('Success 24 h', pct(r24), `${fmt(rows.reduce((a, r) => a + r.runs_24h, 0))} runs`, tone(r24)),
    card('Success 7 d', pct(r7), `${fmt(rows.reduce((a, r) => a + r.runs_7d, 0))} runs`, tone(r7)),
    card('Open alerts', fmt(alerts.length), critical ? `${critical} critical` : 'none critical', critical ? 'bad' : alerts.length ? 'warn' : 'good'),
    card('Open gaps', fmt(gaps), `${fmt(quarantined)} quarantined records`, gaps ? 'warn' : 'good'),
    card('Longest lag', worst ? human(worst.lag_seconds) : '–', worst ? `${worst.entity}${stale ? ` · ${stale} stale` : ''}` : 'no successful run yet',
      stale ? 'warn' : ''),
  );
}

function renderHealth(health) {
  const pill = (ok, text, title) => h('span', { class: `health-pill ${ok ? 'ok' : 'bad'}`, title }, text);
  const db = health.database ?? {};
  const w = health.worker ?? {};
  $('#health').replaceChildren(
    pill(db.ok, db.ok ? `Database · ${db.latencyMs} ms` : 'Database unreachable', db.ok ? 'select 1 answered' : `${db.error ?? ''} ${db.hint ?? ''}`),
    pill(w.ok, w.ok ? 'Worker alive' : 'No worker', w.ok ? (w.how === 'in-process' ? 'the worker runs in the server process'
      : `sync_tick ran ${human(w.secondsAgo ?? 0)} ago`) : `${w.error ?? ''} — ${w.hint ?? ''}`),
  );
}

// ------------------------------------------------------------------ entities and progress

/** The state to show: sync.status's, except that an entity past its freshness window reads "stale". */
function shownState(r) {
  return r.stale && r.enabled && r.state !== 'running' ? 'stale' : r.state;
}

function stateBadge(r) {
  const st = shownState(r);
  return h('span', { class: `badge ${st.replace(' ', '-')}`, title: r.last_error ?? '' }, st);
}

function ratioCell(label, rate, runs) {
  const cls = rate === null ? 'zero' : rate < 90 ? 'count-bad' : '';
  return h('td', { class: 'num', 'data-label': label, title: `${fmt(runs)} runs` }, h('span', { class: cls }, pct(rate)));
}

function countCell(label, n) {
  return h('td', { class: 'num', 'data-label': label }, h('span', { class: n ? 'count-bad' : 'zero' }, fmt(n)));
}

/** A log-capture entity's line: how far behind its source's log it is, and the WAL its slot keeps there. */
function logText(r) {
  const parts = ['log capture'];
  if (r.log_lag_seconds !== null) parts.push(`${human(r.log_lag_seconds)} behind`);
  if (r.log_lag_bytes !== null) parts.push(`${bytesText(r.log_lag_bytes)} of WAL to read`);
  if (r.log_retained_bytes !== null) parts.push(`slot keeps ${bytesText(r.log_retained_bytes)}`);
  if (['lost', 'missing', 'moved', 'unreserved'].includes(r.log_wal_status)) parts.push(`slot ${r.log_wal_status === 'missing' ? 'gone' : r.log_wal_status}!`);
  return parts.join(' · ');
}

function bytesText(n) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function entityRow(r) {
  const live = state.live.get(r.entity);
  const running = r.state === 'running' || live?.status === 'running';
  const button = running
    ? h('button', { type: 'button', class: 'btn small', disabled: true }, 'Running…')
    : h('button', { type: 'button', class: 'btn small', onclick: (e) => syncNow(r.entity, e.currentTarget) }, 'Sync now');
  return h('tr', { class: `entity-row${live ? ' has-progress' : ''}`, 'data-entity': r.entity },
    h('td', { class: 'primary' }, h('div', { class: 'entity-name' }, r.entity),
      h('div', { class: 'entity-sub' }, [r.capture === 'log' ? logText(r) : r.schedule ? `cron ${r.schedule}` : r.sync_interval ? `every ${intervalText(r.sync_interval)}` : 'on demand', r.enabled ? '' : ' · disabled'].join(''))),
    h('td', { 'data-label': 'State' }, stateBadge(r)),
    h('td', { 'data-label': 'Last success', title: localTime(r.last_success_at) }, ago(r.last_success_at)),
    h('td', { class: 'num', 'data-label': 'Lag' }, r.lag_seconds === null ? '–' : human(r.lag_seconds)),
    h('td', { 'data-label': 'Next run', title: localTime(r.next_run_at) }, until(r.next_run_at)),
    ratioCell('OK 24 h', r.success_rate_24h, r.runs_24h),
    ratioCell('OK 7 d', r.success_rate_7d, r.runs_7d),
    countCell('Gaps', r.open_gaps),
    countCell('Alerts', r.open_alerts),
    h('td', { class: 'actions' }, button));
}

function progressText(p) {
  const parts = [];
  const phase = { starting: 'Starting', fetch: 'Fetching', merge: 'Merging', done: 'Finishing' }[p.phase] ?? p.phase;
  if (p.status === 'running') {
    parts.push(h('b', {}, p.cancelRequested ? 'Cancelling…' : phase));
    parts.push(`${fmt(p.rows)}${p.total ? ` of ${p.totalEstimated ? '~' : ''}${fmt(p.total)}` : ''} rows${p.pages ? ` · ${fmt(p.pages)} pages` : ''}`);
    if (p.ratePerSecond) parts.push(`${fmt(p.ratePerSecond)} rows/s`);
    if (p.etaSeconds !== null && p.etaSeconds !== undefined) parts.push(`about ${human(p.etaSeconds)} left`);
  } else {
    const c = p.counts ?? {};
    parts.push(h('b', { class: 'progress-status' }, p.status));
    if (c.fetched !== null && c.fetched !== undefined) parts.push(`${fmt(c.fetched)} fetched · ${changesText(c)}`);
    if (c.quarantined) parts.push(`${fmt(c.quarantined)} quarantined`);
    if (p.error) parts.push(p.error);
  }
  parts.push(`run ${p.runId}${p.dryRun ? ' (dry run)' : ''} · ${duration(p.elapsedSeconds)}`);
  return parts.map((x) => (x instanceof Node ? x : h('span', {}, x)));
}

function progressBox(entity, p) {
  const determinate = p.percent !== null && p.percent !== undefined;
  const bar = h('div', {
    class: `progress ${p.status}${determinate || p.status !== 'running' ? '' : ' indeterminate'}`, role: 'progressbar',
    'aria-label': `${entity} sync progress`, 'aria-valuemin': 0, 'aria-valuemax': 100,
    'aria-valuenow': determinate ? p.percent : undefined, 'aria-valuetext': p.status === 'running' ? p.phase : p.status,
  }, h('div', { class: 'fill' }));
  bar.firstChild.style.width = `${p.status === 'running' ? p.percent ?? 0 : p.percent ?? 100}%`;
  const actions = p.status === 'running'
    ? h('button', { type: 'button', class: 'btn small danger', disabled: p.cancelRequested, onclick: (e) => cancelRun(p, e.currentTarget) },
      p.cancelRequested ? 'Cancelling…' : 'Cancel')
    : h('button', { type: 'button', class: 'btn small ghost', 'aria-label': `Dismiss the result of run ${p.runId}`,
      onclick: () => { state.live.delete(entity); renderEntities(); } }, 'Dismiss');
  return h('div', { class: 'progress-box' }, bar, h('div', { class: 'progress-text' }, progressText(p)), h('div', { class: 'progress-actions' }, actions));
}

function progressRow(entity) {
  const p = state.live.get(entity);
  return h('tr', { class: 'progress-row', 'data-progress-for': entity }, h('td', { colspan: 10 }, progressBox(entity, p)));
}

function renderEntities() {
  const body = $('#entities tbody');
  if (!state.entities.length) {
    body.replaceChildren(h('tr', {}, h('td', { colspan: 10, class: 'empty' }, 'No entities yet: define them in syncline.config.json and run `syncline config apply`.')));
    return;
  }
  body.replaceChildren(...state.entities.flatMap((r) => (state.live.has(r.entity) ? [entityRow(r), progressRow(r.entity)] : [entityRow(r)])));
}

/** Replaces just one entity's rows (as often as its progress changes while streaming). */
function renderProgress(entity) {
  const r = state.entities.find((x) => x.entity === entity);
  const row = document.querySelector(`tr.entity-row[data-entity="${CSS.escape(entity)}"]`);
  const existing = document.querySelector(`tr[data-progress-for="${CSS.escape(entity)}"]`);
  if (!r || !row || !existing || !state.live.has(entity)) return renderEntities();
  row.replaceWith(entityRow(r));
  existing.replaceWith(progressRow(entity));
}

async function syncNow(entity, button) {
  button.disabled = true;
  try {
    const r = await api('/api/sync/manual', { method: 'POST', body: { entity } });
    if (!r.runId) {
      toast(`${entity} waits for a dependency's run to finish; it starts after it`);
      return;
    }
    // The progress row shows the run from here on; only a surprise needs a word.
    if (r.state === 'already-running') toast(`${entity} was already running (run ${r.runId}): showing that run`);
    state.mine.add(r.runId);
    follow(entity, r.runId);
  } catch (err) {
    failed(`Could not start ${entity}`)(err);
    button.disabled = false;
  }
}

async function syncAll(button) {
  button.disabled = true;
  try {
    const r = await api('/api/sync/manual', { method: 'POST', body: { all: true } });
    const started = r.runs.filter((x) => x.runId);
    for (const x of started) { state.mine.add(x.runId); follow(x.entity, x.runId); }
    toast(`Syncing ${r.runs.length} entities in dependency order`, 'ok');
  } catch (err) {
    failed('Could not start the syncs')(err);
  } finally {
    button.disabled = false;
  }
}

async function cancelRun(p, button) {
  button.disabled = true;
  try {
    const r = await api(`/api/sync/cancel/${p.runId}`, { method: 'POST' });
    if (r.phase === 'merge') toast(r.message);
    state.live.set(p.entity, { ...p, cancelRequested: true });
    renderProgress(p.entity);
  } catch (err) {
    failed(`Could not cancel run ${p.runId}`)(err);
    button.disabled = false;
  }
}

/** Follows a run's progress over server-sent events until it ends. */
async function follow(entity, runId) {
  if (state.streams.has(runId)) return;
  state.streams.set(runId, null);
  let ticket;
  try {
    ticket = await api(`/api/sync/progress/${runId}/ticket`, { method: 'POST' });
  } catch (err) {
    state.streams.delete(runId);
    return failed(`Cannot follow run ${runId}`)(err);
  }
  const es = new EventSource(ticket.url);
  state.streams.set(runId, es);
  const update = (e) => { state.live.set(entity, JSON.parse(e.data)); renderProgress(entity); };
  es.addEventListener('progress', update);
  es.addEventListener('end', (e) => {
    es.close();
    state.streams.delete(runId);
    const p = JSON.parse(e.data);
    if (state.mine.has(runId)) {
      update(e);
      if (p.status === 'failed') toast(`${entity}: run ${runId} failed: ${p.error ?? 'see the run log'}`, 'error');
    } else {
      state.live.delete(entity);
    }
    refresh();
    // A run started here shows in the trend at once; the others at the next trend refresh (a busy worker ends many a minute).
    if (state.mine.has(runId)) loadTrend().catch(() => {});
  });
  // A dropped stream whose ticket has expired cannot reconnect: the next refresh follows the run again.
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) state.streams.delete(runId); };
}

// ------------------------------------------------------------------ alerts

function alertItem(a) {
  const ack = h('button', { type: 'button', class: 'btn small', onclick: (e) => acknowledge(a, e.currentTarget) }, 'Acknowledge');
  return h('li', { class: `alert ${a.severity}`, 'data-alert': a.id },
    h('div', { class: 'alert-head' },
      h('span', { class: `badge ${a.severity}` }, a.severity),
      h('span', { class: 'alert-kind' }, a.kind.replaceAll('_', ' ')),
      a.entity ? h('span', { class: 'muted' }, `· ${a.entity}`) : null),
    h('div', { class: 'alert-msg' }, a.message),
    h('div', { class: 'alert-foot' },
      h('span', { class: 'muted small', title: localTime(a.createdAt) },
        `${ago(a.createdAt)}${a.occurrences > 1 ? ` · seen ${a.occurrences}×, last ${ago(a.lastSeenAt)}` : ''}`),
      ack));
}

function renderAlerts(alerts) {
  const count = $('#alerts-count');
  count.textContent = String(alerts.length);
  count.className = `pill${alerts.some((a) => a.severity === 'critical') ? ' bad' : ''}`;
  $('#alerts').replaceChildren(...(alerts.length ? alerts.map(alertItem)
    : [h('li', { class: 'all-clear' }, h('b', {}, 'All clear'), 'No open alerts. New ones also go out by e-mail and webhook when configured.')]));
}

function showName() {
  $('#user').hidden = !state.name;
  $('#user').textContent = state.name;
}

/**
 * Asks who acknowledges; resolves to the name, or null when cancelled (then
 * nothing is acknowledged: acknowledged_by always names a person). A dialog,
 * not a field in the alert: the alert list is redrawn at every refresh.
 */
function askName(what, action) {
  const dialog = $('#name-dialog');
  const input = $('#name-input');
  $('#name-what').textContent = what;
  $('#name-ok').textContent = action;
  $('#name-error').hidden = true;
  input.value = state.name;
  return new Promise((resolve) => {
    const done = (name) => {
      $('#name-form').onsubmit = null;
      $('#name-cancel').onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(name);
    };
    $('#name-form').onsubmit = (e) => {
      e.preventDefault();
      const name = input.value.trim();
      if (!name) {
        $('#name-error').textContent = 'Enter a name: it is recorded as who acknowledged.';
        $('#name-error').hidden = false;
        return input.focus();
      }
      state.name = name;
      localStorage.setItem(NAME_KEY, name);
      showName();
      done(name);
    };
    $('#name-cancel').onclick = () => done(null);
    dialog.onclose = () => done(null); // Escape
    dialog.showModal();
    input.select();
  });
}

function changeName() {
  askName('Recorded with each alert you acknowledge from this browser.', 'Save').catch(failed('Name'));
}

async function acknowledge(a, button) {
  const what = `${a.kind.replaceAll('_', ' ')}${a.entity ? ` on ${a.entity}` : ''}`;
  // The name is asked once, when it is first needed.
  const by = state.name || await askName(`Acknowledging ${what}.`, 'Acknowledge');
  if (!by) return;
  button.disabled = true;
  try {
    await api(`/api/alerts/${a.id}/ack`, { method: 'POST', body: { by } });
    toast(`Acknowledged ${what} as ${by}`, 'ok');
    refresh();
  } catch (err) {
    failed('Could not acknowledge')(err);
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ recent runs

function runRow(r) {
  const changes = r.inserted === null ? '' : `${changesText(r)}${r.quarantined ? ` · ${fmt(r.quarantined)} quarantined` : ''}`;
  return h('tr', { class: 'run-row', title: r.error ?? '' },
    h('td', { class: 'primary', 'data-label': 'Run' }, h('span', { class: 'muted' }, `#${r.id} `), r.trigger, r.dryRun ? ' · dry run' : ''),
    h('td', { 'data-label': 'Entity' }, r.entity),
    h('td', { 'data-label': 'Status' }, h('span', { class: `badge ${r.status}` }, r.status)),
    h('td', { 'data-label': 'Started', title: localTime(r.startedAt) }, ago(r.startedAt)),
    h('td', { class: 'num', 'data-label': 'Took' }, r.status === 'running' ? '…' : duration(r.seconds)),
    h('td', { class: 'num', 'data-label': 'Rows' }, fmt(r.fetched)),
    h('td', { 'data-label': 'Changes' }, changes || null, r.http ? h('div', { class: 'muted' }, httpText(r.http)) : null));
}

/** An http run's requests (detail.http): retries, 429s, time waited, and the limit paced by. */
function httpText(x) {
  const parts = [`${fmt(x.requests)} requests`];
  if (x.retries) parts.push(`${fmt(x.retries)} retried`);
  if (x.throttled) parts.push(`${fmt(x.throttled)} × 429`);
  const waited = (x.wait_ms?.budget ?? 0) + (x.wait_ms?.retry ?? 0);
  if (waited) parts.push(`waited ${duration(waited / 1000)} (budget ${duration((x.wait_ms.budget ?? 0) / 1000)}, retries ${duration((x.wait_ms.retry ?? 0) / 1000)})`);
  if (x.limit) parts.push(`limit ${fmt(x.limit.requests)} / ${x.limit.seconds === null ? '?' : duration(x.limit.seconds)} (${x.limit.from === 'headers' ? 'from the vendor' : 'configured'})`);
  return parts.join(' · ');
}

function renderRuns(runs) {
  $('#runs tbody').replaceChildren(...(runs.length ? runs.map(runRow) : [h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'No runs yet.'))]));
}

// ------------------------------------------------------------------ trend charts

const COLORS = { runs: '#4f46e5', failed: '#ef4444', fetched: '#38bdf8', changed: '#10b981', avg: '#8b5cf6', max: '#f59e0b' };
const STEP_S = { minute: 60, hour: 3600, day: 86400 };
const UNIT = { minute: 'per minute', hour: 'per hour', day: 'per day' };
const WINDOW = { minute: 'last 2 h', hour: 'last 48 h', day: 'last 30 days' };
// Buckets in the API's windows (GET /api/sync/trend).
const WINDOW_BUCKETS = { minute: 120, hour: 48, day: 30 };
// The Auto range fits the runs there are; without it a new install's first
// runs are one spike at the right edge of a 48-hour axis. Room on the left of
// the first run, and the fewest buckets shown, so that a handful of runs
// still reads as a few bars on a time axis with labels.
const FIT_MARGIN = 1.25;
const MIN_BUCKETS = { minute: 10, hour: 6 };
// Counts (runs, rows) are whole: their axis ticks are too.
const WHOLE_INCRS = [1, 2, 5].flatMap((m) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9].map((p) => m * p)).sort((a, b) => a - b);

/**
 * What the Auto range shows for runs that began at `firstRunAt`: the finest
 * granularity whose window holds them all with room on the left, as its last
 * n buckets; runs older than that, the 48 hours.
 */
function autoView(firstRunAt) {
  if (!firstRunAt) return { granularity: 'hour', buckets: null };
  const span = Math.max(0, (Date.now() - Date.parse(firstRunAt)) / 1000);
  for (const granularity of ['minute', 'hour']) {
    const buckets = Math.max(MIN_BUCKETS[granularity], Math.ceil((span * FIT_MARGIN) / STEP_S[granularity]) + 1);
    if (buckets <= WINDOW_BUCKETS[granularity]) return { granularity, buckets };
  }
  return { granularity: 'hour', buckets: null };
}

const windowText = (view) => (view.buckets ? `last ${human(view.buckets * STEP_S[view.granularity])}` : WINDOW[view.granularity]);

/** What a series' legend shows when the pointer is not on the chart: the whole window's sum, mean or maximum. */
function summary(values, how) {
  const xs = values.filter((v) => v !== null && v !== undefined);
  if (!xs.length) return '–';
  if (how === 'sum') return `${nf.format(xs.reduce((a, b) => a + b, 0))} in all`;
  if (how === 'max') return duration(Math.max(...xs));
  return `${duration(xs.reduce((a, b) => a + b, 0) / xs.length)} mean`;
}

function chartOptions(width, series, whole) {
  const { view } = state;
  const axis = { stroke: '#64748b', grid: { stroke: '#eef1f5', width: 1 }, ticks: { stroke: '#e2e8f0', width: 1 }, font: '11px system-ui, sans-serif' };
  const when = new Intl.DateTimeFormat(undefined, {
    minute: { hour: 'numeric', minute: '2-digit' }, hour: { month: 'short', day: 'numeric', hour: 'numeric' }, day: { month: 'short', day: 'numeric' },
  }[view.granularity]);
  // Half a bucket either side: the first and last bars are drawn whole.
  const half = STEP_S[view.granularity] / 2;
  return {
    width, height: 170, cursor: { points: { size: 7 } }, legend: { live: true },
    scales: { x: { time: true, range: (u, min, max) => [min - half, max + half] }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] } },
    axes: [{ ...axis, space: 60 }, { ...axis, size: 44, ...(whole ? { incrs: WHOLE_INCRS } : {}),
      values: (u, v) => v.map((x) => (x >= 1000 ? `${nf.format(x / 1000)}k` : nf.format(x))) }],
    series: [
      { label: view.granularity, value: (u, v) => (v === null ? windowText(view) : when.format(new Date(v * 1000))) },
      ...series.map((s, i) => ({
        label: s.label, stroke: s.color, width: s.dash ? 1.5 : 2, dash: s.dash, spanGaps: true,
        points: { show: s.points ?? false, size: 4, fill: s.color },
        ...(s.bars ? { fill: `${s.color}d9`, paths: uPlot.paths.bars({ size: [0.72, 22], gap: 1 }) } : { fill: s.fill ? `${s.color}1f` : undefined }),
        value: (u, v, si, idx) => (idx === null ? summary(u.data[i + 1], s.summary) : v === null || v === undefined ? '–'
          : s.summary === 'sum' ? nf.format(v) : duration(v)),
      })),
    ],
  };
}

function drawCharts(buckets) {
  for (const c of state.charts) c.destroy();
  const xs = buckets.map((b) => new Date(b.bucket).getTime() / 1000);
  const col = (k) => buckets.map((b) => b[k]);
  const defs = [
    ['#chart-runs', [{ label: 'runs', color: COLORS.runs, bars: true, summary: 'sum' }, { label: 'failed', color: COLORS.failed, bars: true, summary: 'sum' }],
      [col('runs'), col('failed')], true],
    ['#chart-rows', [{ label: 'fetched', color: COLORS.fetched, bars: true, summary: 'sum' }, { label: 'changed', color: COLORS.changed, bars: true, summary: 'sum' }],
      [col('rowsFetched'), col('rowsChanged')], true],
    ['#chart-duration', [{ label: 'average', color: COLORS.avg, fill: true, points: true, summary: 'avg' },
      { label: 'longest', color: COLORS.max, dash: [4, 3], points: true, summary: 'max' }], [col('avgSeconds'), col('maxSeconds')], false],
  ];
  state.charts = defs.map(([sel, series, data, whole]) => {
    const el = $(sel);
    el.replaceChildren();
    const chart = new uPlot(chartOptions(Math.max(240, el.clientWidth), series, whole), [xs, ...data], el);
    // The instance, for the browser test and the devtools console.
    el.uplot = chart;
    return chart;
  });
}

const trendPath = (granularity) => `/api/sync/trend?${new URLSearchParams({ granularity, ...(state.trendEntity ? { entity: state.trendEntity } : {}) })}`;

async function loadTrend() {
  const seq = ++state.trendSeq;
  // Auto asks first for what it showed last; the answer's firstRunAt says whether that still fits.
  let t = await api(trendPath(state.range === 'auto' ? state.view.granularity : state.range));
  const view = state.range === 'auto' ? autoView(t.firstRunAt) : { granularity: state.range, buckets: null };
  if (view.granularity !== t.granularity) t = await api(trendPath(view.granularity));
  if (seq !== state.trendSeq) return;
  state.view = view;
  $('[data-unit]').textContent = UNIT[view.granularity];
  drawCharts(view.buckets ? t.buckets.slice(-view.buckets) : t.buckets);
}

function resizeCharts() {
  for (const c of state.charts) c.setSize({ width: Math.max(240, c.root.parentElement.clientWidth), height: 170 });
}

// ------------------------------------------------------------------ configuration

const FIELDS = ['schedule', 'sync_interval', 'freshness', 'failure_threshold', 'gap_threshold', 'throughput_factor', 'retry_limit', 'retry_delay',
  'delete_guard_percent', 'delete_guard_rows'];
const SWITCHES = ['enabled', 'verify', 'delete_guard'];

function configOf(entity) {
  return state.config.find((c) => c.entity === entity);
}

function fillConfig() {
  const c = configOf($('#config-entity').value);
  const form = $('#config-form');
  clearConfigErrors();
  $('#config-message').hidden = true;
  if (!c) return;
  for (const f of FIELDS) form.elements[f].value = c[f] ?? '';
  for (const s of SWITCHES) form.elements[s].checked = Boolean(c[s]);
  $('#config-facts').replaceChildren(...[`${c.mode} → ${c.target}`, `source ${c.source}`,
    c.dependsOn.length ? `after ${c.dependsOn.join(', ')}` : null].filter(Boolean).map((t) => h('span', {}, t)));
}

function clearConfigErrors() {
  for (const el of document.querySelectorAll('#config-form [aria-invalid]')) el.removeAttribute('aria-invalid');
  for (const el of document.querySelectorAll('#config-form .field-error')) { el.hidden = true; el.textContent = ''; }
}

/** Fields whose value differs from the loaded config, as the API takes them. */
function changedConfig(c) {
  const form = $('#config-form');
  const out = {};
  for (const f of FIELDS) {
    const v = form.elements[f].value.trim();
    if (v !== String(c[f] ?? '')) out[f] = v === '' ? null : v;
  }
  for (const s of SWITCHES) if (form.elements[s].checked !== Boolean(c[s])) out[s] = form.elements[s].checked;
  return out;
}

function configNotice(kind, title, hint) {
  const box = $('#config-message');
  box.className = `notice ${kind}`;
  box.replaceChildren(h('strong', {}, title), hint ? h('span', { class: 'hint' }, hint) : null);
  box.hidden = false;
  box.scrollIntoView({ block: 'nearest' });
}

async function saveConfig(event) {
  event.preventDefault();
  const entity = $('#config-entity').value;
  const c = configOf(entity);
  const body = changedConfig(c);
  clearConfigErrors();
  if (!Object.keys(body).length) return configNotice('success', 'Nothing to save: no field was changed.');
  try {
    const r = await api(`/api/sync/config/${encodeURIComponent(entity)}`, { method: 'PUT', body });
    state.config = state.config.map((x) => (x.entity === entity ? r.entity : x));
    fillConfig();
    configNotice('success', `Saved ${entity}: ${r.changed.map((k) => `${k} = ${r.entity[k] ?? 'none'}`).join(', ') || 'no change'}`,
      'Running workers pick the change up within a second.');
    refresh();
  } catch (err) {
    const input = err.field && $('#config-form').elements[err.field];
    if (input) {
      input.setAttribute('aria-invalid', 'true');
      const msg = input.parentElement.querySelector('.field-error');
      // Beside the field, only what is wrong with it.
      msg.textContent = err.message.replace(/^entity [^:]+: /, '').replace(new RegExp(`^.*?\\b${err.field}: `), '');
      msg.hidden = false;
    }
    configNotice('error', err.message, err.hint ? `Hint: ${err.hint}` : '');
  }
}

async function loadConfig() {
  const { entities } = await api('/api/sync/config');
  state.config = entities;
  const select = $('#config-entity');
  const current = select.value;
  select.replaceChildren(...entities.map((e) => h('option', { value: e.entity }, e.entity)));
  if (current && entities.some((e) => e.entity === current)) select.value = current;
  fillConfig();
}

// ------------------------------------------------------------------ refresh loop

function fillTrendSelect() {
  const select = $('#trend-entity');
  const current = select.value;
  select.replaceChildren(h('option', { value: '' }, 'All entities'), ...state.entities.map((r) => h('option', { value: r.entity }, r.entity)));
  select.value = state.entities.some((r) => r.entity === current) ? current : '';
}

async function refresh() {
  if (!state.token) return;
  try {
    const [status, alerts, runs, health] = await Promise.all([
      api('/api/sync/status'), api('/api/alerts'), api('/api/sync/runs?limit=12'),
      fetch('/api/health', { headers: { authorization: `Bearer ${state.token}` } }).then((r) => r.json()),
    ]);
    const names = JSON.stringify(state.entities.map((r) => r.entity));
    state.entities = status.entities;
    if (JSON.stringify(state.entities.map((r) => r.entity)) !== names) fillTrendSelect();
    // Runs started elsewhere (the worker, another operator) are followed live too.
    for (const r of state.entities) if (r.state === 'running' && r.last_run_id) follow(r.entity, r.last_run_id);
    renderCards(alerts.alerts);
    renderEntities();
    renderAlerts(alerts.alerts);
    renderRuns(runs.runs);
    renderHealth(health);
    $('#refreshed').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (err.status !== 401) failed('Refresh failed')(err);
  }
}

function start() {
  $('#login').hidden = true;
  $('#app').hidden = false;
  showName();
  refresh().then(() => state.token && Promise.all([loadTrend(), loadConfig()])).catch(failed('Loading failed'));
  state.timers.push(setInterval(refresh, REFRESH_MS), setInterval(() => loadTrend().catch(() => {}), TREND_REFRESH_MS));
}

function wire() {
  $('#login-form').addEventListener('submit', signIn);
  $('#sign-out').addEventListener('click', () => signOut());
  $('#user').addEventListener('click', changeName);
  $('#sync-all').addEventListener('click', (e) => syncAll(e.currentTarget));
  $('#config-entity').addEventListener('change', fillConfig);
  $('#config-form').addEventListener('submit', saveConfig);
  $('#config-reset').addEventListener('click', fillConfig);
  $('#trend-entity').addEventListener('change', (e) => { state.trendEntity = e.target.value; loadTrend().catch(failed('Trend')); });
  for (const b of document.querySelectorAll('[data-range]')) {
    b.addEventListener('click', () => {
      state.range = b.dataset.range;
      for (const x of document.querySelectorAll('[data-range]')) x.setAttribute('aria-pressed', String(x === b));
      loadTrend().catch(failed('Trend'));
    });
  }
  let resizeTimer;
  window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(resizeCharts, 100); });
}

/**
 * The link the server prints, …/#token=…, signs in with no prompt: the token
 * goes to sessionStorage and leaves the address bar (history.replaceState),
 * so it is neither bookmarked nor shared. A fragment never reaches a server.
 */
function tokenFromLink() {
  const m = /[#&]token=([^&]+)/.exec(location.hash);
  if (!m) return null;
  history.replaceState(null, '', location.pathname + location.search);
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return m[1];
  }
}

wire();
const linked = tokenFromLink();
if (linked) enter(linked, 'link');
else if (state.token) enter(state.token, 'kept');
else showLogin();
