//! [`ClientPool`]: one keep-alive HTTP client per node, shared by every
//! caller on the thread (the probe, submit, the long-poll and watchdog, log
//! reads). Artifact downloads open a connection of their own, read outside
//! the HTTP client with large reads (see `fetch.rs`): one connection per
//! file transfer costs nothing next to the transfer.
//!
//! A fresh `awc::Client` per job or per call opened new TCP connections for
//! every job; one client per node keeps its idle connections and reuses
//! them. The controller's actors all run on one arbiter (one thread), and an
//! `awc::Client` is not `Send`, so the registry is per thread
//! ([`ClientPool::shared`]): every actor on that arbiter gets the same
//! clients. Timeouts are set per request, never on the client, so a
//! long-poll and a short status call share one pool.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Idle connections are closed after this long unused. It stays below the
/// worker's keep-alive (actix-web's default, 5 s), so the client never
/// picks a connection the worker is about to close.
pub const IDLE_KEEP_ALIVE: Duration = Duration::from_secs(4);

/// A connection is replaced after this long, however busy.
pub const CONN_LIFETIME: Duration = Duration::from_secs(300);

/// At most this many connections to one node at once: more than the
/// requests the jobs in flight there need (a long-poll, a status call and
/// a log read each), few enough to bound what a busy controller opens.
pub const CONNS_PER_NODE: usize = 256;

/// The time allowed to open a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Keep-alive HTTP clients by node id and base URL; cheap to clone (the
/// clones share the clients).
#[derive(Clone, Default)]
pub struct ClientPool {
    inner: Rc<RefCell<Pooled>>,
}

#[derive(Default)]
struct Pooled {
    /// The actix system the clients were made in: their connections belong
    /// to its runtime, so a new system on the same thread starts afresh.
    system: Option<usize>,
    clients: HashMap<(String, String), awc::Client>,
}

thread_local! {
    static SHARED: ClientPool = ClientPool::default();
}

impl ClientPool {
    /// The pool of the current thread (the controller's arbiter).
    pub fn shared() -> ClientPool {
        SHARED.with(Clone::clone)
    }

    /// The client for `node_id` at `base`, made on first use. A node whose
    /// address changed in nodes.json gets a new client (and new
    /// connections).
    pub fn http(&self, node_id: &str, base: &str) -> awc::Client {
        let key = (node_id.to_string(), base.trim_end_matches('/').to_string());
        let system = actix_rt::System::try_current().map(|s| s.id());
        let mut pooled = self.inner.borrow_mut();
        if pooled.system != system {
            pooled.clients.clear();
            pooled.system = system;
        }
        pooled.clients.entry(key).or_insert_with(new_client).clone()
    }

    /// How many node clients the pool holds.
    pub fn len(&self) -> usize {
        self.inner.borrow().clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.borrow().clients.is_empty()
    }
}

/// A keep-alive client without a client-wide timeout (each request sets
/// its own) and without redirects.
pub fn new_client() -> awc::Client {
    let connector = awc::Connector::new()
        .limit(CONNS_PER_NODE)
        .conn_keep_alive(IDLE_KEEP_ALIVE)
        .conn_lifetime(CONN_LIFETIME)
        .timeout(CONNECT_TIMEOUT);
    awc::Client::builder().connector(connector).disable_redirects().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_per_node_and_address() {
        let pool = ClientPool::default();
        pool.http("w1", "http://127.0.0.1:1/");
        pool.http("w1", "http://127.0.0.1:1");
        pool.http("w2", "http://127.0.0.1:2");
        assert_eq!(pool.len(), 2);
        pool.http("w1", "http://127.0.0.1:3");
        assert_eq!(pool.len(), 3);
        assert_eq!(ClientPool::shared().len(), ClientPool::shared().len());
    }

    #[test]
    fn a_new_actix_system_gets_new_clients() {
        let pool = ClientPool::default();
        actix_rt::System::new().block_on(async {
            pool.http("w1", "http://127.0.0.1:1");
            assert_eq!(pool.len(), 1);
        });
        actix_rt::System::new().block_on(async {
            pool.http("w2", "http://127.0.0.1:2");
            assert_eq!(pool.len(), 1, "the first system's client was dropped");
        });
    }
}
