// Forge entry points (manifest.yml: index.handler, index.onIssueUpdated).
// RELAY_BASE_URL is a Forge environment variable; RELAY_API_KEY and
// JWT_SIGNING_SECRET are encrypted Forge variables (`forge variables set --encrypt`).
import Resolver from '@forge/resolver';
import { RelayServer } from '@relay/server';
import { createHandlers } from './handlers.js';

let handlers;
function get() {
  if (!handlers) {
    const baseUrl = process.env.RELAY_BASE_URL;
    if (!baseUrl) throw new Error('set RELAY_BASE_URL: forge variables set RELAY_BASE_URL https://relay.example.com');
    const relay = new RelayServer({
      baseUrl,
      apiKey: process.env.RELAY_API_KEY,
      secret: process.env.JWT_SIGNING_SECRET,
      // A Forge invocation has a time budget: fewer, shorter tries than the default.
      attempts: 3,
      timeout: 5_000,
    });
    handlers = createHandlers({ relay, baseUrl });
  }
  return handlers;
}

const resolver = new Resolver();
resolver.define('getRelayToken', (req) => get().getRelayToken(req));
export const handler = resolver.getDefinitions();

export async function onIssueUpdated(event, context) {
  await get().onIssueUpdated(event, context);
}
