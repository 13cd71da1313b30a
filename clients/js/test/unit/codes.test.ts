import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CLOSE_CODES, CLIENT_CODES, closeAction, type CloseAction } from '@relay/client';

const protocolMd = process.env.RELAY_PROTOCOL_MD ?? fileURLToPath(new URL('../../../../../docs/protocol.md', import.meta.url));

/** The rows of the "Close codes." table: code → what the client should do. */
function docsTable(md: string): Map<number, { meaning: string; todo: string }> {
  const start = md.indexOf('**Close codes.**');
  assert.ok(start >= 0, 'docs/protocol.md has a **Close codes.** table');
  const rows = new Map<number, { meaning: string; todo: string }>();
  let inTable = false;
  for (const line of md.slice(start).split('\n').slice(1)) {
    if (!line.startsWith('|')) {
      if (inTable) break;
      continue;
    }
    inTable = true;
    const cells = line.split('|').slice(1, -1).map((c) => c.trim());
    const code = Number(cells[0]);
    if (!Number.isInteger(code)) continue; // header and separator
    rows.set(code, { meaning: cells[1]!, todo: cells[cells.length - 1]! });
  }
  return rows;
}

/** The docs' words, read as one of the three actions. */
function actionOf(todo: string): CloseAction {
  const t = todo.toLowerCase();
  if (t.includes('fix the client')) return 'stop';
  if (t.includes('new token')) return 'token';
  if (t.includes('reconnect')) return 'retry';
  throw new Error(`cannot read the action in "${todo}"`);
}

test("the client's close-code table equals docs/protocol.md's", () => {
  const docs = docsTable(readFileSync(protocolMd, 'utf8'));
  assert.ok(docs.size >= 10, `found ${docs.size} rows`);
  const fromDocs: Record<number, CloseAction> = {};
  for (const [code, row] of docs) fromDocs[code] = actionOf(row.todo);
  assert.deepEqual({ ...CLOSE_CODES }, fromDocs);
});

test('codes outside the table are retried; the client codes never collide with the relay', () => {
  assert.equal(closeAction(1006), 'retry');
  assert.equal(closeAction(1000), 'retry');
  for (const c of Object.values(CLIENT_CODES)) {
    assert.equal(CLOSE_CODES[c], undefined);
    assert.equal(closeAction(c), 'retry');
  }
});
