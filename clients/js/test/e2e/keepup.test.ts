// The client keeps up: 10,000 events/s for 10 s reach the application in the
// browser, in order, with no growing lag. Runs alone (after the other cases) so the
// figure is not shared with them. Writes build/keepup.json.
//
// The measured page runs in a Chromium that no DevTools client is attached to while
// the events flow: an attached client (Playwright's CDP session) has Chromium report
// every WebSocket frame to it, which on this 2-core machine doubled the renderer's
// CPU and cost the browser process 55-60 % of a core at 10,000 frames/s. So the test
// starts Chromium itself (`--remote-debugging-port=0`), knows the page is connected
// from the node's `relay_connected_clients` and that every event was written from
// `relay_deliveries_total`, and only then attaches playwright-core to read the page.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, REPO, RelayNode, publisher, sleep, startPageServer, until } from './harness.js';

const RATE = Number(process.env.KEEPUP_RATE ?? 10_000);
const SECONDS = Number(process.env.KEEPUP_SECONDS ?? 10);
const BATCH = 100;

let pages: { url: string; close(): Promise<void> };
let node: RelayNode;
let proc: ChildProcess | undefined;
let browser: Browser | undefined;
let profile: string | undefined;
before(async () => {
  [pages, node] = await Promise.all([startPageServer(), RelayNode.start()]);
});
after(async () => {
  await browser?.close().catch(() => undefined);
  if (proc && proc.exitCode === null && proc.signalCode === null) {
    // Chromium and every process it started: they share its process group.
    const gone = new Promise((ok) => proc!.once('exit', ok));
    try {
      process.kill(-proc.pid!, 'SIGKILL');
    } catch {
      proc.kill('SIGKILL');
    }
    await gone;
  }
  proc?.stderr?.destroy();
  if (profile) rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  await pages?.close();
  await node?.stop();
});

/** Sums a counter or gauge of the node's /metrics over its labels. */
async function metric(name: string): Promise<number> {
  const text = await (await fetch(node.http + '/metrics')).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(name + '{') || line.startsWith(name + ' ')) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** Starts Chromium on `url` with nothing attached; resolves to its DevTools endpoint. */
function startChromium(url: string): Promise<string> {
  profile = mkdtempSync(join(tmpdir(), 'relay-keepup-'));
  const child = spawn(CHROMIUM, [...CHROMIUM_ARGS, '--headless', '--remote-debugging-port=0', `--user-data-dir=${profile}`, url], {
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: true,
  });
  proc = child;
  return new Promise((ok, fail) => {
    let err = '';
    const timer = setTimeout(() => fail(new Error('chromium did not start: ' + err.slice(-2000))), 30_000);
    child.stderr!.on('data', (d) => {
      err += d;
      const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        ok(m[1]!);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      fail(new Error(`chromium exited with ${code}: ${err.slice(-2000)}`));
    });
  });
}

test(`keep-up: ${RATE} events/s for ${SECONDS} s reach the page with no growing lag`, async () => {
  const session = 'e2e:keepup';
  const q = new URLSearchParams({ url: node.ws, session, keep: '0' });
  const endpoint = await startChromium(`${pages.url}/index.html?${q}`);
  await until('the page connected', 20_000, async () => (await metric('relay_connected_clients')) >= 1, 100);
  const pub = publisher(node);
  const total = RATE * SECONDS;
  const interval = (1000 * BATCH) / RATE; // ms between batches
  const t0 = Date.now();
  let sent = 0;
  let behind = 0;
  while (sent < total) {
    const due = t0 + (sent / BATCH) * interval;
    const wait = due - Date.now();
    if (wait > 1) await sleep(wait);
    else if (wait < -100) behind++;
    const events = [];
    const t = Date.now();
    for (let i = 0; i < BATCH; i++, sent++) events.push({ session, event: 'tick', data: { n: sent, t } });
    await pub.publish(events);
  }
  const publishSecs = (Date.now() - t0) / 1000;
  // Every event written to the page's socket, then attach to read what the page saw.
  await until('every event written', 60_000, async () => (await metric('relay_deliveries_total')) >= total, 50).catch(() => undefined);
  browser = await chromium.connectOverCDP(endpoint);
  const page: Page | undefined = browser.contexts().flatMap((c) => c.pages()).find((pg) => pg.url().includes('index.html'));
  assert.ok(page, 'the keep-up page is open');
  // Wait for the newest event, or for a resync (after a 4008 the client reloads
  // instead). A page that falls behind may take a while to drain.
  const settled = async () =>
    page.evaluate(
      (last) => (window as any).relayApp.lastN >= last || (window as any).relayApp.resyncs.length > 0,
      total - 1,
    );
  await until('the newest event in the page, or a resync', 60_000, settled, 100).catch(() => undefined);
  const arrived = (await page.evaluate(() => (window as any).relayApp.count as number)) >= total;
  const drained = (Date.now() - t0) / 1000;
  await sleep(200);
  const v = await page.evaluate(() => {
    const a = (window as any).relayApp;
    return {
      count: a.count, duplicates: a.duplicates, outOfOrder: a.outOfOrder, resyncs: a.resyncs.length, lastN: a.lastN,
      lag: (window as any).relayLag(),
      // What the client went through (a 4008, a resync) when not everything arrived.
      states: a.states.map((s: any) => `${s.state}${s.code ? ' ' + s.code : ''}${s.reason ? ' ' + s.reason : ''}`),
    };
  });
  const lag = v.lag as Array<{ sec: number; n: number; mean: number; p50: number; p99: number; max: number }>;
  const rows = lag.map((r, i) => `  s${i}: ${r.n} events, lag mean ${r.mean.toFixed(1)} p50 ${r.p50} p99 ${r.p99} max ${r.max} ms`);
  const fig = {
    rate: RATE,
    seconds: SECONDS,
    events: total,
    received: v.count,
    published_in_s: +publishSecs.toFixed(2),
    achieved_rate: Math.round(total / publishSecs),
    all_in_page_after_s: arrived ? +drained.toFixed(2) : null,
    lag_per_second: lag.map(({ n, mean, p50, p99, max }) => ({ n, mean: +mean.toFixed(1), p50, p99, max })),
    publisher_behind_batches: behind,
  };
  mkdirSync(join(REPO, 'clients/js/build'), { recursive: true });
  writeFileSync(join(REPO, 'clients/js/build/keepup.json'), JSON.stringify(fig, null, 1) + '\n');
  console.log(
    `keep-up figure: ${total} events published in ${publishSecs.toFixed(2)} s (${fig.achieved_rate}/s), ` +
      (arrived ? `all in the page after ${drained.toFixed(2)} s` : `${v.count} in the page after ${drained.toFixed(2)} s`),
  );
  for (const r of rows) console.log('keep-up figure:' + r);
  // What the application must never see, whatever the speed: duplicates, events out
  // of order, or a loss it is not told of. An event that did not arrive was dropped
  // by the relay for a client too slow to keep up (4008), and the client reported
  // it with onResync; then the live events after it still reach the page.
  const told = `client states: ${v.states.join(', ')}; resyncs: ${v.resyncs}`;
  assert.equal(v.duplicates, 0, told);
  // A jump forward in `n` is a gap: allowed only where a resync told of it.
  assert.ok(v.outOfOrder <= v.resyncs, `${v.outOfOrder} gaps, ${v.resyncs} resyncs; ${told}`);
  if (v.resyncs === 0) {
    // Never told of a loss: then every event is there, the newest last.
    assert.equal(v.count, total, told);
    assert.equal(v.lastN, total - 1, told);
  }
  // Told (the relay closed it as too slow, 4008, and its resume could not be
  // replayed): the application reloads its state, which covers what it missed.
  // Speed is measured, not asserted (benchmarks are not timed tests): the figure
  // above goes to clients/js/build/keepup.json and docs/benchmarks.md. Say plainly
  // when this run did not keep up.
  const full = lag.filter((r) => r.n >= RATE / 4);
  const head = full.slice(0, 3), tail = full.slice(-3);
  const p99 = (rs: typeof lag) => (rs.length ? Math.max(...rs.map((r) => r.p99)) : 0);
  const kept = arrived && fig.achieved_rate >= RATE * 0.9 && p99(tail) <= p99(head) + 250 && p99(full) < 1000;
  console.log(
    kept
      ? `keep-up figure: kept up: ${RATE}/s for ${SECONDS} s, p99 lag ${p99(full)} ms`
      : `keep-up figure: did NOT keep up on this machine: ${v.count} of ${total} in the page, ` +
          `published at ${fig.achieved_rate}/s, p99 lag first ${p99(head)} ms, last ${p99(tail)} ms; ${told}`,
  );
});
