// What the end-to-end tests start: real relay nodes, redis-server, a TCP proxy, the
// example page's server, and Debian's chromium through playwright-core.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { RelayServer, signToken } from '@relay/server';

/** build/test/e2e → the repository. */
export const REPO = process.env.RELAY_REPO ?? resolve(dirname(fileURLToPath(import.meta.url)), '../../../../..');
export const SECRET = 'e2e-secret-0123456789abcdef0123456789abcdef';
export const API_KEY = 'e2e-api-key-0123456789';

export function relayBin(): string {
  const bin = process.env.RELAY_BIN ?? join(REPO, 'target/release/relay');
  if (!existsSync(bin)) throw new Error(`no relay binary at ${bin}: build it (cargo build --release) or set RELAY_BIN`);
  return bin;
}

export function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => ok(port));
    });
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value, or throws after `ms`. */
export async function until<T>(what: string, ms: number, fn: () => Promise<T> | T, every = 50): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${String(last)})`);
    await sleep(every);
  }
}

/** One `relay serve` process on a fixed port, so that a restart comes back at the same address. */
export class RelayNode {
  private child: ChildProcess | null = null;
  private readonly dir = mkdtempSync(join(tmpdir(), 'relay-e2e-'));
  stderr = '';
  constructor(readonly port: number, readonly env: Record<string, string> = {}, readonly args: string[] = []) {}

  /** `args` are more `relay serve` flags, e.g. `['--drain-timeout', '2s']`. */
  static async start(env: Record<string, string> = {}, args: string[] = []): Promise<RelayNode> {
    const n = new RelayNode(await freePort(), env, args);
    await n.start();
    return n;
  }

  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  get ws(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  async start(): Promise<void> {
    const child = spawn(relayBin(), ['serve', '--host', '127.0.0.1', '--port', String(this.port), ...this.args], {
      cwd: this.dir,
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        JWT_SIGNING_SECRET: SECRET,
        RELAY_API_KEY: API_KEY,
        ALLOWED_ORIGINS: 'http://127.0.0.1:*',
        RELAY_SHARDS: '1',
        LOG_LEVEL: 'warn',
        ...this.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    child.stderr!.on('data', (d) => (this.stderr = (this.stderr + d).slice(-4000)));
    await new Promise<void>((ok, fail) => {
      let out = '';
      const timer = setTimeout(() => fail(new Error('relay did not start: ' + this.stderr)), 20_000);
      child.stdout!.on('data', (d) => {
        out += d;
        if (out.includes('relay listening on')) {
          clearTimeout(timer);
          ok();
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        fail(new Error(`relay exited with ${code} before listening: ${this.stderr}`));
      });
    });
    child.stdout!.resume();
  }

  /** Sends a signal to the running process (e.g. SIGHUP: reload RELAY_CONFIG_FILE). */
  signal(signal: NodeJS.Signals): void {
    if (!this.child || this.child.exitCode !== null) throw new Error('relay is not running');
    this.child.kill(signal);
  }

  /** SIGKILL (a crash) by default; resolves when the process is gone. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const c = this.child;
    this.child = null;
    if (!c || c.exitCode !== null) return;
    await new Promise<void>((ok) => {
      c.once('exit', () => ok());
      c.kill(signal);
    });
  }

  async stop(): Promise<void> {
    await this.kill('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A redis-server of our own on a free port, no persistence. */
export class Redis {
  private constructor(readonly port: number, private child: ChildProcess) {}
  static async start(): Promise<Redis> {
    const port = await freePort();
    const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
      stdio: 'ignore',
    });
    const r = new Redis(port, child);
    await until('redis-server PING', 5000, () => r.ping());
    return r;
  }
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }
  ping(): Promise<boolean> {
    return new Promise((ok) => {
      const s = net.connect(this.port, '127.0.0.1', () => s.write('PING\r\n'));
      s.on('data', (d) => {
        ok(String(d).startsWith('+PONG'));
        s.destroy();
      });
      s.on('error', () => ok(false));
    });
  }
  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    await new Promise<void>((ok) => {
      this.child.once('exit', () => ok());
      this.child.kill('SIGKILL');
    });
  }
}

/** A TCP proxy in front of a node: `cut()` drops every connection and refuses new ones until `restore()`. */
export class Proxy {
  private readonly sockets = new Set<net.Socket>();
  private down = false;
  private constructor(private readonly server: net.Server, readonly port: number) {}

  static async start(target: number): Promise<Proxy> {
    const port = await freePort();
    let proxy!: Proxy;
    const server = net.createServer((client) => {
      if (proxy.down) return void client.destroy();
      const upstream = net.connect(target, '127.0.0.1');
      for (const s of [client, upstream]) {
        proxy.sockets.add(s);
        s.on('close', () => proxy.sockets.delete(s));
        s.on('error', () => {});
      }
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
    });
    proxy = new Proxy(server, port);
    await new Promise<void>((ok) => server.listen(port, '127.0.0.1', ok));
    return proxy;
  }
  get ws(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }
  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  cut(): void {
    this.down = true;
    for (const s of this.sockets) s.destroy();
  }
  restore(): void {
    this.down = false;
  }
  stop(): Promise<void> {
    this.cut();
    return new Promise((ok) => this.server.close(() => ok()));
  }
}

/**
 * A TCP proxy that looks at the HTTP requests going through it: it records each
 * request's head (`heads`), `blockUpgrades` drops every connection that asks for a
 * WebSocket upgrade (a middlebox that breaks them) while plain HTTP passes, and
 * `cut()` drops every connection and refuses new ones until `restore()`.
 */
export class HttpProxy {
  readonly heads: string[] = [];
  blockUpgrades = false;
  private readonly sockets = new Set<net.Socket>();
  private down = false;
  private constructor(private readonly server: net.Server, readonly port: number) {}

  static async start(target: number): Promise<HttpProxy> {
    const port = await freePort();
    let proxy!: HttpProxy;
    const server = net.createServer((client) => {
      if (proxy.down) return void client.destroy();
      const upstream = net.connect(target, '127.0.0.1');
      for (const s of [client, upstream]) {
        proxy.sockets.add(s);
        s.on('close', () => proxy.sockets.delete(s));
        s.on('error', () => {});
      }
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      let upgraded = false;
      client.on('data', (d: Buffer) => {
        if (!upgraded) {
          const text = d.toString('latin1');
          if (/^[A-Z]+ \S+ HTTP\/1\.1\r\n/.test(text)) {
            const end = text.indexOf('\r\n\r\n');
            proxy.heads.push(end < 0 ? text : text.slice(0, end + 2));
            if (/^upgrade:\s*websocket/im.test(text)) {
              if (proxy.blockUpgrades) return void client.destroy();
              upgraded = true; // what follows is WebSocket frames
            }
          }
        }
        upstream.write(d);
      });
      upstream.pipe(client);
    });
    proxy = new HttpProxy(server, port);
    await new Promise<void>((ok) => server.listen(port, '127.0.0.1', ok));
    return proxy;
  }
  get ws(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }
  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  cut(): void {
    this.down = true;
    for (const s of this.sockets) s.destroy();
  }
  restore(): void {
    this.down = false;
  }
  stop(): Promise<void> {
    this.cut();
    return new Promise((ok) => this.server.close(() => ok()));
  }
}

export function publisher(node: { http: string }): RelayServer {
  return new RelayServer({ baseUrl: node.http, apiKey: API_KEY, secret: SECRET, attempts: 8 });
}

/** Publishes events numbered from..to-1 (data {n, t}) in batches, in order. */
export async function publishRange(pub: RelayServer, session: string, from: number, to: number, batch = 100): Promise<void> {
  for (let i = from; i < to; i += batch) {
    const events = [];
    for (let n = i; n < Math.min(to, i + batch); n++) events.push({ session, event: 'tick', data: { n, t: Date.now() } });
    await pub.publish(events);
  }
}

/** The page server of examples/browser (plain JS, loaded at run time). */
export async function startPageServer(): Promise<{ url: string; close(): Promise<void> }> {
  const mod = (await import(pathToFileURL(join(REPO, 'examples/browser/serve.mjs')).href)) as {
    startPageServer(o?: object): Promise<{ url: string; close(): Promise<void> }>;
  };
  return mod.startPageServer({ secret: SECRET });
}

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** The flags every test browser starts with. */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  '--disable-dev-shm-usage',
];

export function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

export interface AppView {
  count: number;
  ns: number[];
  seqs: number[];
  duplicates: number;
  outOfOrder: number;
  resyncs: Array<{ epoch: string; seq: number; reason: string; at: number }>;
  states: Array<{
    state: string; code?: number; reason?: string; delay?: number; error?: string; conn?: string; url?: string; transport?: string; at: number;
  }>;
  refreshed: Array<{ exp: number; at: number }>;
  errors: string[];
}

/** A page of the example app in its own browser context, its tokens minted here. */
export class TestPage {
  tokenFails = false;
  tokens = 0;
  private constructor(readonly context: BrowserContext, readonly page: Page) {}

  static async open(
    browser: Browser,
    pageUrl: string,
    cfg: { url: string | string[]; session: string; ttl?: number; keep?: boolean; options?: object; sub?: string },
  ): Promise<TestPage> {
    const context = await browser.newContext();
    const page = await context.newPage();
    const tp = new TestPage(context, page);
    await page.exposeFunction('relayGetToken', () => {
      if (tp.tokenFails) throw new Error('token backend unavailable');
      tp.tokens++;
      return signToken({ secret: SECRET, session: cfg.session, sub: cfg.sub ?? 'e2e', ttl: cfg.ttl ?? 900 });
    });
    await page.goto(pageUrl + '/index.html');
    await page.evaluate((c) => (window as any).relayStart(c), cfg);
    return tp;
  }

  view(): Promise<AppView> {
    return this.page.evaluate(() => {
      const a = (window as any).relayApp;
      return {
        count: a.count, ns: a.ns, seqs: a.seqs, duplicates: a.duplicates, outOfOrder: a.outOfOrder,
        resyncs: a.resyncs, states: a.states, refreshed: a.refreshed, errors: a.errors,
      };
    });
  }

  count(): Promise<number> {
    return this.page.evaluate(() => (window as any).relayApp.count as number);
  }

  state(): Promise<string> {
    return this.page.evaluate(() => (window as any).relayApp.client.state.state as string);
  }

  /** The client's `presence` (what its presence frames said), and how many came. */
  presence(): Promise<{ frames: number; users: string[] | null; usersTotal: number; sockets: number } | null> {
    return this.page.evaluate(() => {
      const a = (window as any).relayApp;
      const p = a.client.presence;
      return p ? { frames: a.presenceFrames, users: p.users, usersTotal: p.usersTotal, sockets: p.sockets } : null;
    });
  }

  connected(): Promise<boolean> {
    return this.state().then((s) => s === 'connected');
  }

  close(): Promise<void> {
    return this.context.close();
  }
}

/** Asserts ns is exactly from..to-1 in order. */
export function assertRange(ns: number[], from: number, to: number): void {
  if (ns.length !== to - from) throw new Error(`expected ${to - from} events, got ${ns.length}`);
  for (let i = 0; i < ns.length; i++) {
    if (ns[i] !== from + i) throw new Error(`event ${i}: expected n=${from + i}, got ${ns[i]}`);
  }
}
