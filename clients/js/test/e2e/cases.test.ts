// End to end in real Chromium against real nodes. The cases are independent (each
// has its own nodes, proxy and browser context), so they run concurrently in one
// browser.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser } from 'playwright-core';
import { signToken, type RelayServer } from '@relay/server';
import {
  HttpProxy, Proxy, Redis, RelayNode, SECRET, TestPage, assertRange, launchBrowser, publishRange, publisher, sleep, startPageServer,
  until, type AppView,
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

describe('presence (#18)', { concurrency: true }, () => {
  test('11. two nodes on one Redis: alice sees bob (two tabs) once, his last tab closing is a leave; the backend agrees', async () => {
    const done = timed('presence across nodes');
    const redis = await Redis.start();
    cleanup.push(() => redis.stop());
    const env = { REDIS_URL: redis.url, RELAY_PRESENCE: 'users', RELAY_PRESENCE_INTERVAL: '200ms' };
    const [a, b] = await Promise.all([RelayNode.start(env), RelayNode.start(env)]);
    cleanup.push(() => a.stop(), () => b.stop());
    const session = 'e2e:presence';
    const alice = await TestPage.open(browser, pages.url, { url: a.ws, session, sub: 'alice' });
    cleanup.push(() => alice.close());
    await until('alice connected', 10_000, () => alice.connected());
    await until('alice sees herself', 10_000, async () => (await alice.presence())?.users?.join() === 'alice');
    const bobTabs = [];
    for (let i = 0; i < 2; i++) {
      const tab = await TestPage.open(browser, pages.url, { url: b.ws, session, sub: 'bob' });
      cleanup.push(() => tab.close());
      bobTabs.push(tab);
      await until(`bob's tab ${i + 1} connected`, 10_000, () => tab.connected());
    }
    // bob's two tabs are one user; every page, on either node, says so. A second tab
    // is not a join (no frame for it); the snapshot it gets counts every socket.
    for (const [i, p] of [alice, ...bobTabs].entries()) {
      await until('alice and bob', 10_000, async () => {
        const v = await p.presence();
        return v?.users?.join() === 'alice,bob' && v.usersTotal === 2;
      }).catch(async (e) => {
        throw new Error(`page ${i}: ${(e as Error).message}: ${JSON.stringify(await p.presence())}`);
      });
    }
    assert.equal((await bobTabs[1].presence())?.sockets, 3, "the second tab's snapshot counts three sockets");
    // Node a hears of node b's sockets through Redis, once per interval (200 ms here):
    // its answer may name bob with one socket for that long after his second tab.
    const pub = publisher(a);
    const counts = async () => (await pub.presence(session)).users!.map((u) => [u.sub, u.sockets]);
    await until('node a counts both of bob\'s tabs', 5_000, async () => JSON.stringify(await counts()) === '[["alice",1],["bob",2]]')
      .catch(async (e) => {
        throw new Error(`${(e as Error).message}: ${JSON.stringify(await counts())}`);
      });
    const both = await pub.presence(session);
    assert.equal(both.users_total, 2);
    // A tab closing is not a leave; the last one is.
    await bobTabs[0].close();
    await until('bob down to one socket', 10_000, async () => (await pub.presence(session)).sockets === 2);
    await sleep(600);
    assert.deepEqual((await alice.presence())?.users, ['alice', 'bob'], 'one tab closing is not a leave');
    await bobTabs[1].close();
    await until('bob left', 10_000, async () => (await alice.presence())?.users?.join() === 'alice');
    const left = await pub.presence(session);
    assert.deepEqual(left.users!.map((u) => u.sub), ['alice']);
    // Presence frames are not events: none reached the application as one.
    assert.equal((await alice.view()).count, 0);
    done();
  });
});

/** Publishes events numbered from 0 in batches of `batch`, one batch every `every` ms, until `stop()`. */
function publishLoop(pub: RelayServer, session: string, batch = 5, every = 20) {
  let n = 0;
  let stopped = false;
  const done = (async () => {
    while (!stopped) {
      const events = [];
      for (let i = 0; i < batch; i++) events.push({ session, event: 'tick', data: { n: n++, t: Date.now() } });
      await pub.publish(events);
      await sleep(every);
    }
  })();
  return {
    get published(): number {
      return n;
    },
    async stop(): Promise<number> {
      stopped = true;
      await done;
      return n;
    },
  };
}

/** Waits for the page to have `total` events; says what the client went through if not. */
async function allArrive(p: TestPage, total: number, ms = 20_000): Promise<void> {
  try {
    await until(`all ${total}`, ms, async () => (await p.count()) >= total);
  } catch (e) {
    const v = await p.view();
    throw new Error(`${(e as Error).message}: ${v.count} in the page; ${story(v).join(', ')}; resyncs ${JSON.stringify(v.resyncs)}`);
  }
}

/** The page's state changes in short: `connected sse`, `disconnected 1012`, ... */
function story(v: AppView): string[] {
  return v.states.map((s) => [s.state, s.transport, s.code].filter((x) => x !== undefined).join(' '));
}

describe('event streams and the transport switch (#13)', { concurrency: true }, () => {
  test('7. a real EventSource on /sse?token=: a cut while 500 are published, it resumes with Last-Event-ID by itself', async () => {
    const done = timed('EventSource, cut, 500');
    const node = await RelayNode.start();
    const proxy = await HttpProxy.start(node.port);
    cleanup.push(() => proxy.stop(), () => node.stop());
    const session = 'e2e:eventsource';
    const context = await browser.newContext();
    cleanup.push(() => context.close());
    const page = await context.newPage();
    await page.goto(pages.url + '/index.html'); // an origin of its own, allowed by ALLOWED_ORIGINS
    const token = signToken({ secret: SECRET, session, sub: 'e2e', ttl: 900 });
    await page.evaluate((url) => {
      const got = { ns: [] as number[], seqs: [] as number[], ids: [] as string[], opens: 0, errors: 0, resyncs: 0, closes: 0 };
      (window as any).got = got;
      const es = new EventSource(url);
      es.onopen = () => got.opens++;
      es.onerror = () => got.errors++;
      es.addEventListener('event', (e) => {
        const f = JSON.parse((e as MessageEvent).data);
        got.ns.push(f.data.n);
        got.seqs.push(f.seq);
        got.ids.push((e as MessageEvent).lastEventId);
      });
      es.addEventListener('resync', () => got.resyncs++);
      es.addEventListener('close', () => got.closes++);
    }, `${proxy.http}/sse?token=${token}`);
    const got = () => page.evaluate(() => (window as any).got);
    await until('the stream open', 10_000, async () => (await got()).opens >= 1);
    const pub = publishLoop(publisher(node), session);
    await until('100 events', 15_000, async () => (await got()).ns.length >= 100);
    proxy.cut();
    const atCut = { published: pub.published, seen: (await got()).ns.length };
    await sleep(300);
    proxy.restore();
    await until('publishing goes on past the cut', 20_000, () => pub.published >= 500);
    const total = await pub.stop();
    await until(`all ${total}`, 20_000, async () => (await got()).ns.length >= total);
    await sleep(300);
    const g = await got();
    assertRange(g.ns, 0, total);
    assert.deepEqual(g.seqs, Array.from({ length: total }, (_, i) => i + 1));
    assert.equal(g.resyncs, 0, 'a replay, not a resync');
    assert.ok(g.opens >= 2 && g.errors >= 1, `reconnected by itself (${g.opens} opens, ${g.errors} errors)`);
    assert.ok(atCut.published < total, `cut mid-stream: ${JSON.stringify(atCut)}`);
    const streams = proxy.heads.filter((h) => h.startsWith('GET /sse?token='));
    assert.ok(streams.length >= 2, 'a second request');
    assert.doesNotMatch(streams[0]!, /last-event-id/i, 'the first request starts from the stream position');
    const resumed = streams.map((h) => /^last-event-id: *(\S+)/im.exec(h)?.[1]).filter(Boolean);
    assert.ok(resumed.length >= 1, 'the reconnect sends Last-Event-ID');
    assert.ok(g.ids.includes(resumed[0]!), `Last-Event-ID ${resumed[0]} is an id the page had seen`);
    console.log(`e2e figure: EventSource cut after ${atCut.seen} of ${total} events (${atCut.published} published), ${g.opens} opens`);
    done();
  });

  test('8. @relay/client on the event stream (fetch, Authorization): the same cut, the same 500, no token in any URL', async () => {
    const done = timed('fetch reader, cut, 500');
    const node = await RelayNode.start();
    const proxy = await HttpProxy.start(node.port);
    cleanup.push(() => proxy.stop(), () => node.stop());
    const session = 'e2e:fetch-sse';
    const p = await TestPage.open(browser, pages.url, { url: proxy.ws, session, options: { transports: ['sse'] } });
    cleanup.push(() => p.close());
    await until('connected', 10_000, () => p.connected());
    const pub = publishLoop(publisher(node), session);
    await until('100 events', 15_000, async () => (await p.count()) >= 100);
    proxy.cut();
    const atCut = { published: pub.published, seen: await p.count() };
    await sleep(300);
    proxy.restore();
    await until('publishing goes on past the cut', 20_000, () => pub.published >= 500);
    const total = await pub.stop();
    await allArrive(p, total);
    await sleep(300);
    const v = await p.view();
    assertRange(v.ns, 0, total);
    assert.deepEqual(v.seqs, Array.from({ length: total }, (_, i) => i + 1));
    assert.equal(v.duplicates, 0);
    assert.equal(v.resyncs.length, 0, 'a replay, not a resync');
    const connected = v.states.filter((s) => s.state === 'connected');
    assert.ok(connected.length >= 2, 'reconnected by itself');
    assert.ok(connected.every((s) => s.transport === 'sse' && s.url === `${proxy.http}/sse`), JSON.stringify(connected));
    assert.ok(atCut.published < total, `cut mid-stream: ${JSON.stringify(atCut)}`);
    const gets = proxy.heads.filter((h) => h.startsWith('GET /sse'));
    assert.ok(gets.length >= 2);
    for (const h of gets) {
      assert.match(h, /^GET \/sse HTTP\/1\.1\r\n/, 'no token (nor anything) in the URL');
      assert.match(h, /^authorization: Bearer [\w-]+\.[\w-]+\.[\w-]+\r$/im);
    }
    assert.doesNotMatch(gets[0]!, /last-event-id/i);
    assert.match(gets[1]!, /^last-event-id: [0-9a-f]{16}:\d+\r$/im, 'the reconnect resumes from the position');
    assert.equal(proxy.heads.filter((h) => /^GET \/ws/.test(h)).length, 0, "transports: ['sse'] opens no WebSocket");
    console.log(`e2e figure: fetch reader cut after ${atCut.seen} of ${total} events, ${connected.length} connects`);
    done();
  });

  test('9. the operator switch: RELAY_TRANSPORTS=sse,poll on SIGHUP, 1012, the client moves to SSE, every event once, in order', async () => {
    const done = timed('RELAY_TRANSPORTS switch, ws -> sse');
    const dir = mkdtempSync(join(tmpdir(), 'relay-e2e-switch-'));
    const file = join(dir, 'relay.env');
    writeFileSync(file, 'RELAY_TRANSPORTS=ws,sse,poll\n');
    // The move takes a few seconds (three refused tries after the 1012): at ~200
    // events/s that can pass the default 1,000 events of history, and the resume
    // would be a resync. Room for 10,000, so the test checks the replay.
    const node = await RelayNode.start({ RELAY_CONFIG_FILE: file, RELAY_HISTORY_EVENTS: '10000' }, ['--drain-timeout', '2s']);
    cleanup.push(() => node.stop(), async () => rmSync(dir, { recursive: true, force: true }));
    const session = 'e2e:switch';
    const p = await TestPage.open(browser, pages.url, { url: node.ws, session });
    cleanup.push(() => p.close());
    await until('connected over WebSocket', 10_000, async () => (await p.view()).states.some((s) => s.state === 'connected' && s.transport === 'ws'));
    const pub = publishLoop(publisher(node), session, 5, 20);
    await until('events flowing', 10_000, async () => (await p.count()) >= 100);
    writeFileSync(file, 'RELAY_TRANSPORTS=sse,poll\n');
    const hup = Date.now();
    node.signal('SIGHUP');
    await until('connected over SSE', 30_000, async () => (await p.view()).states.some((s) => s.state === 'connected' && s.transport === 'sse'));
    const onSse = Date.now();
    const seenAtSwitch = await p.count();
    await sleep(1000); // and events go on over the stream
    const total = await pub.stop();
    await allArrive(p, total);
    await sleep(300);
    const v = await p.view();
    assertRange(v.ns, 0, total);
    assert.deepEqual(v.seqs, Array.from({ length: total }, (_, i) => i + 1));
    assert.equal(v.duplicates, 0);
    assert.equal(v.resyncs.length, 0, 'no loss across the switch: a replay, not a resync');
    const st = story(v);
    const i1012 = st.indexOf('disconnected 1012');
    assert.ok(i1012 > 0 && st.slice(0, i1012).includes('connected ws'), st.join(', '));
    assert.equal(st[st.length - 1], 'connected sse', st.join(', '));
    assert.ok(v.count > seenAtSwitch, 'events over the stream');
    const at1012 = v.states.find((s) => s.code === 1012)!.at;
    console.log(
      `e2e figure: switch: 1012 ${at1012 - hup} ms after SIGHUP, on SSE ${onSse - at1012} ms after the 1012; ` +
        `${total} events, ${v.states.filter((s) => s.state === 'connecting' && s.transport === 'ws').length - 1} WebSocket tries after the first; ${st.join(', ')}`,
    );
    done();
  });

  test('10. WebSocket upgrades blocked by a middlebox, HTTP passing: the client ends up on SSE; back on WebSocket when unblocked', async () => {
    const done = timed('fallback to SSE and back');
    const node = await RelayNode.start();
    const proxy = await HttpProxy.start(node.port);
    proxy.blockUpgrades = true;
    cleanup.push(() => proxy.stop(), () => node.stop());
    const session = 'e2e:fallback';
    const p = await TestPage.open(browser, pages.url, { url: proxy.ws, session, options: { wsRetryAfter: 4000 } });
    cleanup.push(() => p.close());
    await until('connected over SSE', 30_000, async () => (await p.view()).states.some((s) => s.state === 'connected' && s.transport === 'sse'));
    // From the first welcome on (the stream's), every event: across the way back too.
    const pub = publishLoop(publisher(node), session, 2, 50);
    const fellBack = await p.view();
    const wsTries = fellBack.states.filter((s) => s.state === 'connecting' && s.transport === 'ws').length;
    // fallbackAfter: 3 tries in a row, then the stream (a 4th may start before the
    // third try's probe has answered, on a loaded machine).
    assert.ok(wsTries >= 3 && wsTries <= 4, `${wsTries} WebSocket tries before the stream`);
    const upgrades = () => proxy.heads.filter((h) => /^upgrade: *websocket/im.test(h)).length;
    await until('events over SSE', 10_000, async () => (await p.count()) >= 20);
    // wsRetryAfter: a trial WebSocket, still blocked; the stream goes on.
    const before = upgrades();
    await until('a trial WebSocket', 15_000, () => upgrades() > before);
    await sleep(500);
    assert.equal(await p.state(), 'connected');
    assert.equal((await p.view()).states.filter((s) => s.state === 'connected').length, 1, 'the stream was not interrupted by the failed trial');
    // The middlebox goes away: the next trial takes over.
    proxy.blockUpgrades = false;
    await until('back on WebSocket', 15_000, async () => (await p.view()).states.some((s) => s.state === 'connected' && s.transport === 'ws'));
    await sleep(500);
    const total = await pub.stop();
    await allArrive(p, total);
    await sleep(300);
    const v = await p.view();
    assertRange(v.ns, 0, total);
    assert.equal(v.duplicates, 0);
    assert.equal(v.resyncs.length, 0);
    const st = story(v);
    assert.deepEqual(st.filter((s) => s.startsWith('connected')), ['connected sse', 'connected ws'], st.join(', '));
    console.log(`e2e figure: fallback: ${st.join(', ')}; ${total} events`);
    done();
  });
});
