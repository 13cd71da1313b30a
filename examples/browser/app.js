// The example page's application: one RelayClient, and what it saw, kept in
// window.relayApp so the end-to-end tests can read it. `./relay-client.js` is the
// @relay/client bundle that serve.mjs builds and serves.
import { RelayClient } from './relay-client.js';

const $ = (id) => document.getElementById(id);
const app = {
  client: null,
  count: 0,
  /** data.n of every event, when the publisher numbers them (tests do). */
  ns: [],
  seqs: [],
  duplicates: 0,
  outOfOrder: 0,
  resyncs: [],
  states: [],
  refreshed: [],
  errors: [],
  /** Presence frames seen, and the client's view after the last one. */
  presenceFrames: 0,
  presence: null,
  /** Per second of receipt: [events, sum of lag ms, max lag ms, lags for percentiles]. */
  lag: new Map(),
  keep: true,
  lastN: null,
};
window.relayApp = app;

function log(line) {
  if (!app.keep) return;
  const el = $('log');
  el.textContent = `${new Date().toISOString().slice(11, 23)} ${line}\n` + el.textContent.slice(0, 20000);
}

// The counter on screen is redrawn at most once per animation frame, not once per
// event: at thousands of events a second, writes between two frames are never seen.
let countShown = false;
function showCount() {
  if (countShown) return;
  countShown = true;
  requestAnimationFrame(() => {
    countShown = false;
    $('count').textContent = String(app.count);
  });
}

async function getToken(session) {
  // The tests provide the token (and can make it fail); a person uses serve.mjs's /token.
  if (typeof window.relayGetToken === 'function') return window.relayGetToken();
  const r = await fetch('/token?session=' + encodeURIComponent(session));
  if (!r.ok) throw new Error('token endpoint answered ' + r.status);
  return r.text();
}

window.relayStart = (cfg) => {
  app.keep = cfg.keep !== false;
  const client = new RelayClient({
    ...cfg.options,
    url: cfg.url,
    getToken: () => getToken(cfg.session),
    onEvent(e) {
      const now = Date.now();
      app.count++;
      const d = e.data;
      if (d && typeof d.n === 'number') {
        if (app.lastN !== null && d.n <= app.lastN) app.duplicates++;
        else if (app.lastN !== null && d.n !== app.lastN + 1) app.outOfOrder++;
        app.lastN = d.n;
        if (app.keep) app.ns.push(d.n);
      }
      if (app.keep) app.seqs.push(e.seq);
      if (d && typeof d.t === 'number') {
        const sec = Math.floor(now / 1000);
        let b = app.lag.get(sec);
        if (!b) app.lag.set(sec, (b = { n: 0, sum: 0, max: 0, all: [] }));
        const l = now - d.t;
        b.n++;
        b.sum += l;
        if (l > b.max) b.max = l;
        b.all.push(l);
      }
      showCount();
      if (app.keep && app.count <= 2000) log(`event ${e.epoch}:${e.seq} ${e.event} ${JSON.stringify(d)}`);
    },
    onResync(r) {
      app.resyncs.push({ ...r, at: Date.now() });
      $('resyncs').textContent = String(app.resyncs.length);
      log(`resync ${r.reason} ${r.epoch}:${r.seq} (reload your state here)`);
    },
    onPresence(p) {
      app.presenceFrames++;
      app.presence = p;
      log(`presence ${p.usersTotal} users ${p.users ? p.users.join(',') : '(counts only)'}, ${p.sockets} sockets`);
    },
    onStateChange(s) {
      app.states.push({ ...s, delay: s.delay === Infinity ? -1 : s.delay, error: s.error ? String(s.error) : undefined, at: Date.now() });
      $('state').textContent = s.state;
      log(`state ${JSON.stringify(s)}`);
    },
    onRefreshed(exp) {
      app.refreshed.push({ exp, at: Date.now() });
      log(`refreshed, exp ${exp}`);
    },
    onError(e) {
      app.errors.push(String(e.message));
      log(`error ${e.message}`);
    },
  });
  app.client = client;
  client.connect();
  return true;
};

/** Lag figures per second of receipt: n, mean, p50, p99, max (ms). */
window.relayLag = () =>
  [...app.lag.entries()].sort((a, b) => a[0] - b[0]).map(([sec, b]) => {
    const s = b.all.slice().sort((x, y) => x - y);
    const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
    return { sec, n: b.n, mean: b.sum / b.n, p50: q(0.5), p99: q(0.99), max: b.max };
  });

const q = new URLSearchParams(location.search);
if (q.get('url')) {
  // keep=0: count and time events but keep no per-event record (the keep-up test).
  window.relayStart({ url: q.get('url').split(','), session: q.get('session') || 'demo', keep: q.get('keep') !== '0' });
}
