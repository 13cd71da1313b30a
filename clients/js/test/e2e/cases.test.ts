// End to end in real Chromium against real nodes. The cases are independent (each
// has its own nodes, proxy and browser context), so they run concurrently in one
// browser.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Browser } from 'playwright-core';
import {
  Proxy, Redis, RelayNode, TestPage, assertRange, launchBrowser, publishRange, publisher, sleep, startPageServer, until,
} from './harness.js';

let browser: Browser;
let pages: { url: string; close(): Promise<void> };
const cleanup: Array<() => Promise<unknown>> = [];

before(async () => {
  [browser, pages] = await Promise.all([launchBrowser(), startPageServer()]);
});
after(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => {});
  await browser?.close();
  await pages?.close();
});

function timed(name: string): () => void {
  const t0 = Date.now();
  return () => console.log(`e2e timing: ${name}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

describe('browser client against real nodes', { concurrency: true }, () => {
  test('1. 1,000 events arrive in order', async () => {
    const done = timed('1,000 in order');
    const node = await RelayNode.start();
    cleanup.push(() => node.stop());
    const p = await TestPage.open(browser, pages.url, { url: node.ws, session: 'e2e:order' });
    cleanup.push(() => p.close());
    await until('connected', 10_000, () => p.connected());
    const pub = publisher(node);
    // Single events and batches mixed.
    for (let n = 0; n < 100; n++) await pub.publish({ session: 'e2e:order', event: 'tick', data: { n, t: Date.now() } });
    await publishRange(pub, 'e2e:order', 100, 1000, 90);
    await until('1,000 events', 20_000, async () => (await p.count()) >= 1000);
    await sleep(200);
    const v = await p.view();
    assertRange(v.ns, 0, 1000);
    assert.deepEqual(v.seqs, Array.from({ length: 1000 }, (_, i) => i + 1));
    assert.equal(v.resyncs.length, 0);
    done();
  });

  test('2. a cut connection: 500 published while away arrive exactly once, in order, no resync', async () => {
    const done = timed('proxy cut, 500 while away');
    const node = await RelayNode.start();
    const proxy = await Proxy.start(node.port);
    cleanup.push(() => proxy.stop(), () => node.stop());
    const session = 'e2e:cut';
    const p = await TestPage.open(browser, pages.url, { url: proxy.ws, session });
    cleanup.push(() => p.close());
    await until('connected', 10_000, () => p.connected());
    const pub = publisher(node);
    await publishRange(pub, session, 0, 100);
    await until('first 100', 10_000, async () => (await p.count()) >= 100);
    proxy.cut();
    await until('disconnected', 5_000, async () => (await p.state()) !== 'connected');
    await publishRange(pub, session, 100, 600, 50);
    await sleep(300);
    assert.equal(await p.count(), 100, 'nothing arrives while away');
    proxy.restore();
    await until('all 600', 20_000, async () => (await p.count()) >= 600);
    await sleep(300);
    const v = await p.view();
    assertRange(v.ns, 0, 600);
    assert.equal(v.duplicates, 0);
    assert.equal(v.resyncs.length, 0, 'a replay, not a resync');
    const connects = v.states.filter((s) => s.state === 'connected').length;
    assert.ok(connects >= 2, 'reconnected by itself');
    done();
  });

  test('3. node SIGKILLed and restarted: reconnects by itself, onResync once', async () => {
    const done = timed('SIGKILL + restart, resync');
    const node = await RelayNode.start();
    cleanup.push(() => node.stop());
    const session = 'e2e:restart';
    const p = await TestPage.open(browser, pages.url, { url: node.ws, session });
    cleanup.push(() => p.close());
    await until('connected', 10_000, () => p.connected());
    const pub = publisher(node);
    await publishRange(pub, session, 0, 50);
    await until('50 events', 10_000, async () => (await p.count()) >= 50);
    await node.kill('SIGKILL');
    await until('disconnected', 5_000, async () => (await p.state()) !== 'connected');
    await node.start();
    await until('reconnected', 20_000, async () => (await p.view()).states.filter((s) => s.state === 'connected').length >= 2);
    await until('resync', 5_000, async () => (await p.view()).resyncs.length >= 1);
    await publishRange(pub, session, 50, 60);
    await until('events after the restart', 10_000, async () => (await p.count()) >= 60);
    await sleep(500);
    const v = await p.view();
    assert.equal(v.resyncs.length, 1, JSON.stringify(v.resyncs));
    assert.equal(v.resyncs[0]!.reason, 'resync');
    assertRange(v.ns, 0, 60);
    done();
  });

  test('4. a 10 s token refreshed in-band outlives its exp; failing getToken reports 4001 and retries', async () => {
    const done = timed('10 s token, refresh, then 4001');
    const node = await RelayNode.start({ JWT_LEEWAY: '1s' });
    cleanup.push(() => node.stop());
    const session = 'e2e:token';
    const p = await TestPage.open(browser, pages.url, { url: node.ws, session, ttl: 10 });
    cleanup.push(() => p.close());
    await until('connected', 10_000, () => p.connected());
    const t0 = Date.now();
    const first = (await p.view()).states.find((s) => s.state === 'connected')!;
    await sleep(Math.max(0, 13_000 - (Date.now() - t0)));
    let v = await p.view();
    assert.ok(v.refreshed.length >= 1, 'the relay acknowledged a refresh');
    assert.equal(v.states.filter((s) => s.state === 'connected').length, 1, 'the same socket, past the first exp');
    assert.equal(await p.state(), 'connected');
    // Events still flow on the refreshed socket.
    await publishRange(publisher(node), session, 0, 5);
    await until('events', 5_000, async () => (await p.count()) >= 5);
    assert.ok(first.conn);
    p.tokenFails = true;
    await until('closed with 4001', 20_000, async () => (await p.view()).states.some((s) => s.state === 'disconnected' && s.code === 4001));
    await until('retrying with a failing getToken', 15_000, async () => {
      const st = (await p.view()).states.filter((s) => s.state === 'disconnected' && s.code === 4001 && s.error);
      return st.length >= 2;
    });
    v = await p.view();
    const lastState = v.states[v.states.length - 1]!;
    assert.ok(['disconnected', 'connecting'].includes(lastState.state), 'still retrying, not closed');
    // And when tokens come back, it is connected again.
    p.tokenFails = false;
    await until('connected again', 25_000, () => p.connected());
    done();
  });

  test('5. offline then online: connected again within 1 s', async () => {
    const done = timed('offline/online');
    const node = await RelayNode.start();
    cleanup.push(() => node.stop());
    const p = await TestPage.open(browser, pages.url, { url: node.ws, session: 'e2e:offline' });
    cleanup.push(() => p.close());
    await until('connected', 10_000, () => p.connected());
    await p.context.setOffline(true);
    await until('disconnected (offline)', 5_000, async () => (await p.state()) === 'disconnected');
    const before = (await p.view()).states.length;
    await sleep(2_000);
    const during = await p.view();
    assert.equal(during.states.length, before, 'no spinning while offline');
    assert.equal(during.states[during.states.length - 1]!.reason, 'offline');
    const back = Date.now();
    await p.context.setOffline(false);
    await until('connected', 5_000, () => p.connected(), 10);
    const v = await p.view();
    const at = v.states.filter((s) => s.state === 'connected').pop()!.at;
    const ms = at - back;
    console.log(`e2e figure: connected ${ms} ms after going online`);
    assert.ok(ms < 1000, `connected ${ms} ms after online`);
    done();
  });

  test('6. two nodes on one Redis (history redis): its node killed, resumes on the other with zero loss', async () => {
    const done = timed('two nodes + Redis failover');
    const redis = await Redis.start();
    cleanup.push(() => redis.stop());
    const env = { REDIS_URL: redis.url, RELAY_HISTORY: 'redis' };
    const [a, b] = await Promise.all([RelayNode.start(env), RelayNode.start(env)]);
    cleanup.push(() => a.stop(), () => b.stop());
    const session = 'e2e:failover';
    const p = await TestPage.open(browser, pages.url, { url: [a.ws, b.ws], session });
    cleanup.push(() => p.close());
    await until('connected', 10_000, () => p.connected());
    assert.equal((await p.view()).states.find((s) => s.state === 'connected')!.url, a.ws);
    const pub = publisher(b);
    await publishRange(pub, session, 0, 100);
    await until('first 100', 10_000, async () => (await p.count()) >= 100);
    await a.kill('SIGKILL');
    await publishRange(pub, session, 100, 600, 50);
    await until('all 600', 30_000, async () => (await p.count()) >= 600);
    await sleep(300);
    const v = await p.view();
    assertRange(v.ns, 0, 600);
    assert.equal(v.resyncs.length, 0, 'zero loss: no resync');
    assert.equal(v.states.filter((s) => s.state === 'connected').pop()!.url, b.ws);
    done();
  });
});
