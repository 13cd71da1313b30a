// The Forge app's logic, kept free of @forge/* imports so that test/ can run it
// against a real relay node. src/index.js wires it into Forge.

/** The one session an issue's sockets join. */
export function sessionForIssue(key) {
  if (typeof key !== 'string' || !/^[A-Z][A-Z0-9_]*-[0-9]+$/.test(key)) throw new Error('not an issue key: ' + key);
  return 'issue:' + key;
}

/**
 * The tenant: the site's cloud id (a resolver's context has it; a product event's
 * context has the installation ARI `ari:cloud:jira::site/<cloudId>`). It goes in the
 * tokens' tenant claim and in publishes' X-Relay-Tenant, for the relay's per-tenant
 * caps.
 */
export function tenantOf(context) {
  const id = context?.cloudId ?? String(context?.installContext ?? '').split('/').pop();
  return id && /^[A-Za-z0-9._:-]{1,128}$/.test(id) ? id : undefined;
}

/** https://relay.example.com → wss://relay.example.com/ws (http → ws for the local loop). */
export function socketUrl(baseUrl) {
  const u = new URL('/ws', baseUrl);
  u.protocol = u.protocol === 'http:' ? 'ws:' : 'wss:';
  return u.href;
}

/**
 * @param {{ relay: import('@relay/server').RelayServer, baseUrl: string, ttl?: number }} deps
 */
export function createHandlers({ relay, baseUrl, ttl = 600 }) {
  const url = socketUrl(baseUrl);
  return {
    /**
     * Resolver `getRelayToken`: a short-lived token for the issue the panel is on.
     * The session comes from the product's context, never from the caller's payload,
     * so a user can only listen to the issue whose panel Jira showed them.
     */
    getRelayToken({ context }) {
      const key = context?.extension?.issue?.key;
      const session = sessionForIssue(key);
      const token = relay.signToken({
        session,
        sub: context.accountId,
        ttl,
        tenant: tenantOf(context),
      });
      return { token, url, session };
    },

    /**
     * Trigger `avi:jira:updated:issue`: publish the change to the issue's session.
     * The event id is derived from the product event, so Forge's own retries of this
     * invocation (and ours) are delivered once.
     */
    async onIssueUpdated(event, context) {
      const issue = event?.issue;
      const session = sessionForIssue(issue?.key);
      const changeId = event.changelog?.id ?? issue.fields?.updated ?? event.timestamp;
      const [receipt] = await relay.publish(
        {
          session,
          event: 'issue.updated',
          id: `jira-updated:${issue.id}:${changeId}`,
          data: {
            key: issue.key,
            summary: issue.fields?.summary,
            status: issue.fields?.status?.name,
            changes: (event.changelog?.items ?? []).map((i) => ({ field: i.field, from: i.fromString, to: i.toString })),
            by: event.atlassianId,
          },
        },
        { tenant: tenantOf(context) },
      );
      return receipt;
    },
  };
}
