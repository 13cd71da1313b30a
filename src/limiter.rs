//! Rate limiters and caps that hold per node, whatever the shard count.
//!
//! - connects per client address (the peer, or the client named by
//!   `X-Forwarded-For` when the peer is a trusted proxy);
//! - published events per API key;
//! - open sockets per tenant, a tenant being the value of a configurable JWT claim
//!   (for a Forge app, the installation or cloud id). Tenants are never registered
//!   up front: a tenant exists while it has sockets.
//! - published events per tenant. Publishes carry an API key, not a JWT, so the
//!   backend names the tenant in `X-Relay-Tenant` (the value its sockets' tokens
//!   carry in the tenant claim); a publish that names none is not tenant-limited.
//!
//! - open connections on the node (`RELAY_MAX_CONNECTIONS`), which SIGHUP may
//!   change. A connection holds its node and tenant slots as one [`SocketPermit`]
//!   from the upgrade's acceptance to its close; dropping the permit gives both
//!   back, so no code path releases a slot by hand.
//!
//! (Sockets per session need no shared state: a session's sockets all live on its
//! owning shard, which counts them.)
//!
//! The keyed rate limiters are governor's (GCRA over a concurrent map), shared by
//! all shards: one check per handshake or publish, never per delivered frame.
//! Their memory is bounded by [`Limiters::forget_idle`], which housekeeping calls.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

/// The rates and caps, from the configuration. `None`/0 disables one.
#[derive(Debug, Clone, Default)]
pub struct LimiterConfig {
    /// Upgrade requests per second per client address (burst: twice that).
    pub connects_per_sec: Option<NonZeroU32>,
    /// Published events per second per API key (burst: one second's worth).
    pub events_per_sec: Option<NonZeroU32>,
    /// Open sockets per session (checked by the owning shard).
    pub max_sockets_per_session: usize,
    /// The JWT claim naming a socket's tenant.
    pub tenant_claim: Option<String>,
    /// Open sockets per tenant.
    pub max_sockets_per_tenant: usize,
    /// Published events per second per tenant named by `X-Relay-Tenant`.
    pub tenant_events_per_sec: Option<NonZeroU32>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

/// The rates and caps in force, with their rate limiters. Replaced whole by a
/// reload ([`Limiters::reconfigure`]); a limiter whose rate did not change is
/// carried over with its state.
struct Rates {
    config: LimiterConfig,
    connects: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    events: Option<Arc<DefaultKeyedRateLimiter<usize>>>,
    tenant_events: Option<Arc<DefaultKeyedRateLimiter<String>>>,
}

/// Node-wide limiter state. Shared by every shard (`NodeShared`).
pub struct Limiters {
    /// Read once per connect or publish (never per frame); written by a reload.
    rates: RwLock<Arc<Rates>>,
    /// Open sockets per tenant: kept across reloads, so a new cap applies to the
    /// sockets a tenant really holds. Touched once per socket opened or closed.
    tenants: Mutex<HashMap<String, usize>>,
    /// Open connections on the node, against `max_connections`.
    open: AtomicUsize,
    /// `RELAY_MAX_CONNECTIONS`, which SIGHUP may change.
    max_connections: AtomicUsize,
}

/// Why [`Limiters::admit_socket`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefusal {
    /// The tenant holds its `RELAY_TENANT_MAX_SOCKETS`: the client retries later.
    #[error("too many sockets for this tenant")]
    Tenant,
    /// The node holds `RELAY_MAX_CONNECTIONS`: the client tries another node.
    #[error("node at its connection limit")]
    NodeFull,
}

/// One connection's node slot and (when it names one) its tenant's socket slot,
/// held from the upgrade's acceptance until the connection closes. `Send`, so it
/// moves with a socket handed to another shard; dropping it gives both slots back.
#[derive(Debug)]
pub struct SocketPermit {
    limiters: Arc<Limiters>,
    tenant: Option<Box<str>>,
}

impl SocketPermit {
    /// The tenant whose slot this permit holds, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        self.limiters.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(t) = &self.tenant {
            self.limiters.tenant_release(t);
        }
    }
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters")
            .field("config", &self.rates().config)
            .finish()
    }
}

impl Rates {
    /// Limiters for `config`, carrying over `old`'s where the rate is the same.
    fn new(config: LimiterConfig, old: Option<&Rates>) -> Rates {
        let two = NonZeroU32::MIN.saturating_add(1);
        let keep = |same: bool| same && old.is_some();
        let old_cfg = old.map(|o| &o.config);
        Rates {
            connects: match old {
                Some(o)
                    if keep(
                        old_cfg.map(|c| c.connects_per_sec) == Some(config.connects_per_sec),
                    ) =>
                {
                    o.connects.clone()
                }
                _ => config.connects_per_sec.map(|r| {
                    Arc::new(RateLimiter::keyed(
                        Quota::per_second(r).allow_burst(r.saturating_mul(two)),
                    ))
                }),
            },
            events: match old {
                Some(o)
                    if keep(old_cfg.map(|c| c.events_per_sec) == Some(config.events_per_sec)) =>
                {
                    o.events.clone()
                }
                _ => config
                    .events_per_sec
                    .map(|r| Arc::new(RateLimiter::keyed(Quota::per_second(r).allow_burst(r)))),
            },
            tenant_events: match old {
                Some(o)
                    if keep(
                        old_cfg.map(|c| c.tenant_events_per_sec)
                            == Some(config.tenant_events_per_sec),
                    ) =>
                {
                    o.tenant_events.clone()
                }
                _ => config
                    .tenant_events_per_sec
                    .map(|r| Arc::new(RateLimiter::keyed(Quota::per_second(r).allow_burst(r)))),
            },
            config,
        }
    }
}

impl Limiters {
    pub fn new(config: LimiterConfig, max_connections: usize) -> Limiters {
        Limiters {
            rates: RwLock::new(Arc::new(Rates::new(config, None))),
            tenants: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(max_connections),
        }
    }

    fn rates(&self) -> Arc<Rates> {
        match self.rates.read() {
            Ok(r) => r.clone(),
            // A writer never panics while holding it; if one did, its value stands.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Applies reloaded rates and caps. A limiter whose rate is unchanged keeps
    /// its state; one whose rate changed starts afresh (every key with a full
    /// burst, once: only an operator's SIGHUP does this). Open sockets per tenant
    /// are kept: a lower cap refuses new sockets until the count is under it, and
    /// never closes one.
    pub fn reconfigure(&self, config: LimiterConfig) {
        let old = self.rates();
        let next = Arc::new(Rates::new(config, Some(&old)));
        match self.rates.write() {
            Ok(mut w) => *w = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// The JWT claim naming a socket's tenant, if tenants are configured.
    pub fn tenant_claim(&self) -> Option<String> {
        self.rates().config.tenant_claim.clone()
    }

    /// Open sockets a session may have on the node.
    pub fn max_sockets_per_session(&self) -> usize {
        self.rates().config.max_sockets_per_session
    }

    /// Takes a connection's slots: its tenant's (when `tenant` is named) and one of
    /// the node's. Both or neither: a refusal holds nothing.
    pub fn admit_socket(
        self: &Arc<Self>,
        tenant: Option<String>,
    ) -> Result<SocketPermit, SlotRefusal> {
        if let Some(t) = &tenant {
            if !self.tenant_acquire(t) {
                return Err(SlotRefusal::Tenant);
            }
        }
        let max = self.max_connections.load(Ordering::Relaxed);
        // From here the permit exists, so a refusal below releases through its drop.
        let permit = SocketPermit {
            limiters: self.clone(),
            tenant: tenant.map(String::into_boxed_str),
        };
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            return Err(SlotRefusal::NodeFull);
        }
        Ok(permit)
    }

    /// Connections open on the node now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Applies a reloaded `RELAY_MAX_CONNECTIONS`; open connections stay.
    pub fn set_max_connections(&self, max: usize) {
        self.max_connections.store(max, Ordering::Relaxed);
    }

    /// The address a connect is charged to: the peer, unless the peer is a trusted
    /// proxy, then the right-most address in `X-Forwarded-For` that is not one.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let rates = self.rates();
        let trusted = |ip: &IpAddr| rates.config.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        let Some(list) = forwarded_for else {
            return peer;
        };
        list.rsplit(',')
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .find(|ip| !trusted(ip))
            .unwrap_or(peer)
    }

    /// Charges one upgrade to `ip`; false when over the rate.
    pub fn allow_connect(&self, ip: IpAddr) -> bool {
        self.rates()
            .connects
            .as_ref()
            .is_none_or(|l| l.check_key(&ip).is_ok())
    }

    /// Charges `events` published events to API key number `key`.
    pub fn allow_events(&self, key: usize, events: usize) -> bool {
        let rates = self.rates();
        let Some(l) = &rates.events else {
            return true;
        };
        let n = NonZeroU32::new(events.min(u32::MAX as usize) as u32).unwrap_or(NonZeroU32::MIN);
        matches!(l.check_key_n(&key, n), Ok(Ok(_)))
    }

    /// Charges `events` published events to `tenant`.
    pub fn allow_tenant_events(&self, tenant: &str, events: usize) -> bool {
        let rates = self.rates();
        let Some(l) = &rates.tenant_events else {
            return true;
        };
        let n = NonZeroU32::new(events.min(u32::MAX as usize) as u32).unwrap_or(NonZeroU32::MIN);
        matches!(l.check_key_n(&tenant.to_string(), n), Ok(Ok(_)))
    }

    /// Takes a socket slot for `tenant`; false when the tenant is at its cap.
    pub fn tenant_acquire(&self, tenant: &str) -> bool {
        let max = self.rates().config.max_sockets_per_tenant;
        // Counted even when uncapped, so a cap set by a reload sees real counts.
        let max = if max == 0 { usize::MAX } else { max };
        let Ok(mut map) = self.tenants.lock() else {
            return true;
        };
        let n = map.entry(tenant.to_string()).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    pub fn tenant_release(&self, tenant: &str) {
        if let Ok(mut map) = self.tenants.lock() {
            if let Some(n) = map.get_mut(tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(tenant);
                }
            }
        }
    }

    /// Drops rate-limiter state of keys that are back to full credit, so memory
    /// follows the clients that are active now, not every client ever seen.
    pub fn forget_idle(&self) {
        let rates = self.rates();
        for l in rates.connects.iter() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        for l in rates.events.iter() {
            l.retain_recent();
        }
        for l in rates.tenant_events.iter() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiters(c: LimiterConfig) -> Limiters {
        Limiters::new(c, 1000)
    }

    #[test]
    fn a_permit_holds_node_and_tenant_slots_until_dropped() {
        let l = Arc::new(Limiters::new(
            LimiterConfig {
                max_sockets_per_tenant: 1,
                ..LimiterConfig::default()
            },
            2,
        ));
        let a = l.admit_socket(Some("t1".into())).unwrap();
        assert_eq!(a.tenant(), Some("t1"));
        assert_eq!(
            l.admit_socket(Some("t1".into())).unwrap_err(),
            SlotRefusal::Tenant
        );
        let b = l.admit_socket(None).unwrap();
        assert_eq!(l.admit_socket(None).unwrap_err(), SlotRefusal::NodeFull);
        assert_eq!(l.open_connections(), 2, "a refusal holds no slot");
        drop(a);
        assert_eq!(l.open_connections(), 1);
        assert!(l.tenants.lock().unwrap().is_empty(), "tenant slot returned");
        // A node-full refusal gives back the tenant slot it took first.
        let c = l.admit_socket(None).unwrap();
        assert_eq!(
            l.admit_socket(Some("t2".into())).unwrap_err(),
            SlotRefusal::NodeFull
        );
        assert!(l.tenants.lock().unwrap().is_empty());
        l.set_max_connections(3);
        let d = l.admit_socket(Some("t2".into())).unwrap();
        drop((b, c, d));
        assert_eq!(l.open_connections(), 0);
    }

    #[test]
    fn connects_are_limited_per_address() {
        let l = limiters(LimiterConfig {
            connects_per_sec: NonZeroU32::new(2),
            ..LimiterConfig::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let allowed = (0..10).filter(|_| l.allow_connect(a)).count();
        assert_eq!(allowed, 4, "burst of twice the rate");
        assert!(l.allow_connect(b), "another address has its own budget");
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let l = limiters(LimiterConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..LimiterConfig::default()
        });
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            l.client_ip(proxy, Some("198.51.100.7, 10.9.9.9")),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(l.client_ip(outsider, Some("198.51.100.7")), outsider);
        assert_eq!(l.client_ip(proxy, Some("not an ip")), proxy);
    }

    #[test]
    fn events_are_charged_per_key_with_batches_counting_each_event() {
        let l = limiters(LimiterConfig {
            events_per_sec: NonZeroU32::new(100),
            ..LimiterConfig::default()
        });
        assert!(l.allow_events(0, 100));
        assert!(!l.allow_events(0, 1));
        assert!(l.allow_events(1, 50));
        assert!(
            !l.allow_events(2, 101),
            "a batch over the burst never passes"
        );
    }

    #[test]
    fn tenant_publishes_are_charged_per_tenant() {
        let l = limiters(LimiterConfig {
            tenant_events_per_sec: NonZeroU32::new(10),
            ..LimiterConfig::default()
        });
        assert!(l.allow_tenant_events("t1", 10));
        assert!(!l.allow_tenant_events("t1", 1));
        assert!(
            l.allow_tenant_events("t2", 10),
            "another tenant has its own budget"
        );
    }

    #[test]
    fn tenants_are_capped_and_forgotten_when_empty() {
        let l = limiters(LimiterConfig {
            max_sockets_per_tenant: 2,
            ..LimiterConfig::default()
        });
        assert!(l.tenant_acquire("t1"));
        assert!(l.tenant_acquire("t1"));
        assert!(!l.tenant_acquire("t1"));
        assert!(l.tenant_acquire("t2"));
        l.tenant_release("t1");
        assert!(l.tenant_acquire("t1"));
        l.tenant_release("t1");
        l.tenant_release("t1");
        l.tenant_release("t2");
        assert!(l.tenants.lock().unwrap().is_empty());
    }
}
