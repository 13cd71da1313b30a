// The Custom UI issue panel: subscribes to its issue's session through the relay.
import { invoke, requestJira } from '@forge/bridge';
import { RelayClient } from '@relay/client';

const $ = (id) => document.getElementById(id);

async function reload(key) {
  // After a resync some updates may be missing: read the issue as it is now.
  const r = await requestJira(`/rest/api/3/issue/${key}?fields=summary,status`);
  const issue = await r.json();
  show(`now: ${issue.fields.summary} (${issue.fields.status.name})`);
}

function show(text) {
  const li = document.createElement('li');
  li.textContent = text;
  $('updates').prepend(li);
}

const first = await invoke('getRelayToken'); // { token, url, session }
const key = first.session.slice('issue:'.length);
let spare = first.token;

const relay = new RelayClient({
  url: first.url,
  // Called before every connect and refresh; the resolver mints a fresh token.
  getToken: async () => {
    if (spare) {
      const t = spare;
      spare = null;
      return t;
    }
    return (await invoke('getRelayToken')).token;
  },
  onEvent: (e) => {
    const d = e.data;
    const changes = (d.changes ?? []).map((c) => `${c.field}: ${c.from ?? '∅'} → ${c.to ?? '∅'}`).join(', ');
    show(`${d.key} ${changes || 'updated'}`);
  },
  onResync: () => void reload(key),
  onStateChange: (s) => {
    $('state').textContent = s.state === 'disconnected' ? `reconnecting in ${Math.round(s.delay / 1000)} s` : s.state;
  },
});
relay.connect();
addEventListener('pagehide', () => relay.close());
