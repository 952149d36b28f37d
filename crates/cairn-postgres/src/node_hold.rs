//! One live runtime per node id over a schema (ADR 0027).
//!
//! A sweep ends a node's `owner_bound` work once a newer incarnation of the
//! node registers (ADR 0017), which is proof only while no two live runtimes
//! share a node id. The runtime that takes a node id holds a session advisory
//! lock on it, on a connection of its own, for as long as it runs. The server
//! releases the lock when that connection ends: at once when the holder exits
//! or is killed (its kernel closes the socket), and within about 25 s when its
//! host vanishes (the connection asks the server for TCP keepalives 10 s idle,
//! then 3 probes 5 s apart).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{CairnError, NodeIdentity, Result};
use tokio_postgres::{Client, Config, NoTls};

use crate::conn::{describe, storage};

/// How often a runtime asks again for a node id another connection holds.
const RETRY: Duration = Duration::from_millis(500);

/// A held node id: the lock lasts as long as this value, or its connection.
pub struct NodeHold {
    client: Client,
    released: Arc<AtomicBool>,
}

impl std::fmt::Debug for NodeHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHold").finish_non_exhaustive()
    }
}

impl NodeHold {
    /// Whether the connection that holds the lock is still open (once it is
    /// not, the server has released the lock).
    pub fn is_held(&self) -> bool {
        !self.client.is_closed()
    }
}

impl Drop for NodeHold {
    fn drop(&mut self) {
        self.released.store(true, Ordering::Relaxed);
    }
}

/// The advisory lock's key text: the schema and the node id.
fn key(schema: &str, node: &str) -> String {
    format!("cairn node {schema} {node}")
}

/// Take `node` over `schema`, asking again for up to `wait` while another
/// connection holds it (a killed holder's connection may take a moment to end).
pub(crate) async fn hold(config: &Config, schema: &str, node: &str, wait: Duration) -> Result<NodeHold> {
    NodeIdentity::validate_node_id(node)?;
    let mut config = config.clone();
    config
        .application_name(format!("cairn-node-{schema}"))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10));
    let (client, connection) = config.connect(NoTls).await.map_err(storage)?;
    let released = Arc::new(AtomicBool::new(false));
    let watching = released.clone();
    let owned = node.to_string();
    tokio::spawn(async move {
        let ended = connection.await;
        if !watching.load(Ordering::Relaxed) {
            tracing::error!(
                node = %owned,
                error = ?ended.err().map(|e| describe(&e)),
                "the connection holding this node id ended: another runtime may now take the id"
            );
        }
    });
    client
        .batch_execute("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3")
        .await
        .map_err(storage)?;
    let key = key(schema, node);
    let deadline = tokio::time::Instant::now() + wait;
    let mut warned = false;
    loop {
        let row = client
            .query_one("SELECT pg_try_advisory_lock(hashtextextended($1::text, 0))", &[&key])
            .await
            .map_err(storage)?;
        if row.try_get::<_, bool>(0).map_err(storage)? {
            return Ok(NodeHold { client, released });
        }
        if tokio::time::Instant::now() + RETRY > deadline {
            released.store(true, Ordering::Relaxed);
            return Err(CairnError::Unavailable(format!(
                "node id `{node}` is in use over schema `{schema}` by another live connection: two live \
                 runtimes under one node id would sweep each other's owner_bound work; stop the other one \
                 or give this one its own node id"
            )));
        }
        if !warned {
            tracing::warn!(node, "node id held by another connection; waiting for it to end");
            warned = true;
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_core::SystemClock;

    use super::*;
    use crate::testing::{enabled, fresh};

    #[tokio::test]
    async fn a_node_id_is_held_once_per_schema_and_free_again_when_dropped() {
        if !enabled() {
            return;
        }
        let (registry, _schema) = fresh(Arc::new(SystemClock)).await;
        let (other, _other_schema) = fresh(Arc::new(SystemClock)).await;
        let first = registry.hold_node("box-1", Duration::ZERO).await.expect("first hold");
        assert!(first.is_held());
        let err = registry
            .hold_node("box-1", Duration::from_millis(600))
            .await
            .expect_err("a second hold of the same id");
        assert!(
            matches!(&err, CairnError::Unavailable(m) if m.contains("`box-1`") && m.contains("in use")),
            "{err}"
        );
        // Another id, or the same id over another schema, is free.
        let _box2 = registry.hold_node("box-2", Duration::ZERO).await.expect("another id");
        let _elsewhere = other.hold_node("box-1", Duration::ZERO).await.expect("another schema");
        // A waiting runtime takes the id as soon as the holder lets go.
        let waiting = {
            let registry = registry.clone();
            tokio::spawn(async move { registry.hold_node("box-1", Duration::from_secs(30)).await })
        };
        tokio::time::sleep(RETRY).await;
        drop(first);
        let again = waiting.await.expect("task").expect("held once the first was dropped");
        assert!(again.is_held());
        assert!(matches!(
            registry.hold_node("a/b", Duration::ZERO).await,
            Err(CairnError::InvalidId(_))
        ));
    }
}
