// The playbook's mock publisher: sends sample events through @relay/server, for
// manual checks of a page or a Forge app against a relay.
//
//   npm --prefix clients/js run mock-publish -- --session demo --count 5 --interval 1000
//   node --experimental-strip-types scripts/mock-publish.ts --session demo     # Node >= 22.6, after npm run build
//
// RELAY_BASE_URL (default http://127.0.0.1:3000) and RELAY_API_KEY come from the
// environment, else from ./.env.local (what `relay serve --dev` writes).
import { existsSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { RelayServer } from '../clients/js/packages/server/dist/index.js';

const { values } = parseArgs({
  options: {
    session: { type: 'string', default: 'demo' },
    event: { type: 'string', default: 'issue.updated' },
    count: { type: 'string', default: '3' },
    interval: { type: 'string', default: '500' },
    wait: { type: 'boolean', default: false },
    url: { type: 'string' },
  },
});

function fromEnvFile(name: string): string | undefined {
  if (process.env[name]) return process.env[name];
  // npm --prefix runs us in clients/js; INIT_CWD is where the command was typed.
  const file = (process.env.INIT_CWD ?? '.') + '/.env.local';
  if (!existsSync(file)) return undefined;
  const m = readFileSync(file, 'utf8').match(new RegExp(`^${name}=(.*)$`, 'm'));
  return m?.[1]?.trim().replace(/^["']|["']$/g, '').split(',')[0];
}

const baseUrl = values.url ?? fromEnvFile('RELAY_BASE_URL') ?? 'http://127.0.0.1:3000';
const apiKey = fromEnvFile('RELAY_API_KEY');
if (!apiKey) {
  console.error('mock-publish: set RELAY_API_KEY (or run where relay serve --dev wrote .env.local)');
  process.exit(2);
}

const relay = new RelayServer({ baseUrl, apiKey });
const count = Number(values.count);
const statuses = ['To Do', 'In Progress', 'In Review', 'Done'];
for (let n = 0; n < count; n++) {
  const data = {
    key: 'PROJ-1',
    summary: 'Sample issue',
    status: statuses[n % statuses.length],
    changes: [{ field: 'status', from: statuses[(n + 3) % statuses.length], to: statuses[n % statuses.length] }],
    n,
    t: Date.now(),
  };
  let r;
  try {
    [r] = await relay.publish({ session: values.session!, event: values.event!, data }, values.wait ? { wait: 'delivered' } : {});
  } catch (e) {
    // A RelayError: status (0 for the network), the relay's code, retryable.
    const err = e as { message?: string; status?: number; code?: string };
    console.error(`mock-publish: ${baseUrl}: ${err.message} (status ${err.status}, code ${err.code})`);
    process.exit(1);
  }
  console.log(JSON.stringify(r));
  if (n + 1 < count) await new Promise((ok) => setTimeout(ok, Number(values.interval)));
}
