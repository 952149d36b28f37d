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

use std::time::Duration;

use cairn_core::{CairnError, NodeIdentity, Result};
use tokio::sync::{oneshot, watch};
use tokio_postgres::{Client, Config, NoTls};

use crate::conn::{describe, storage};

/// How often a runtime asks again for a node id another connection holds,
/// and how often a holder whose connection ended tries to reconnect.
const RETRY: Duration = Duration::from_millis(500);

/// Where a runtime's hold on its node id stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldState {
    /// The lock is held on a live connection.
    Held,
    /// The connection that held it ended (a restarted server, a broken
    /// network): the holder is reconnecting to take the id again.
    Retaking,
    /// Another connection took the id while this holder's was down: this
    /// runtime must stop, since the other one may sweep its work. Final.
    Lost,
}

/// A held node id: the lock lasts as long as this value. When its connection
/// ends while the value lives, the hold reconnects and takes the id again;
/// when another runtime took it meanwhile, the hold is [`HoldState::Lost`].
pub struct NodeHold {
    state: watch::Receiver<HoldState>,
    keeper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NodeHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHold").field("state", &self.state()).finish()
    }
}

impl NodeHold {
    /// Whether the lock is held now (on a connection still open).
    pub fn is_held(&self) -> bool {
        self.state() == HoldState::Held
    }

    /// Where the hold stands now.
    pub fn state(&self) -> HoldState {
        *self.state.borrow()
    }

    /// Resolves once `state` satisfies `pred` (at once if it does now); never
    /// when no later state can (the hold lost, or its keeper gone).
    pub async fn reached(&self, pred: impl Fn(HoldState) -> bool) -> HoldState {
        let mut rx = self.state.clone();
        let reached = rx.wait_for(|s| pred(*s)).await.map(|s| *s);
        match reached {
            Ok(s) => s,
            Err(_) => std::future::pending().await,
        }
    }

    /// Resolves when another runtime took this node id: the runtime holding
    /// this value must stop (`cairn serve` shuts down with an error).
    pub async fn lost(&self) {
        self.reached(|s| s == HoldState::Lost).await;
    }
}

impl Drop for NodeHold {
    fn drop(&mut self) {
        // The keeper owns the client: dropping it closes the connection, and
        // the server releases the lock.
        self.keeper.abort();
    }
}

/// The advisory lock's key text: the schema and the node id.
pub(crate) fn key(schema: &str, node: &str) -> String {
    format!("cairn node {schema} {node}")
}

/// A connection of the hold's own, with server-side keepalives, and a
/// receiver that answers (with the reason, if any) when it ends.
async fn connect(config: &Config) -> Result<(Client, oneshot::Receiver<Option<String>>)> {
    let (client, connection) = config.connect(NoTls).await.map_err(storage)?;
    let (ended_tx, ended) = oneshot::channel();
    tokio::spawn(async move {
        let why = connection.await.err().map(|e| describe(&e));
        let _ = ended_tx.send(why);
    });
    client
        .batch_execute("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3")
        .await
        .map_err(storage)?;
    Ok((client, ended))
}

/// Try the lock on `client`: whether it was taken, and the server process
/// of `client`'s session.
async fn try_lock(client: &Client, key: &str) -> Result<(bool, i32)> {
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1::text, 0)), pg_backend_pid()",
            &[&key],
        )
        .await
        .map_err(storage)?;
    Ok((row.try_get(0).map_err(storage)?, row.try_get(1).map_err(storage)?))
}

/// The server process of the session that holds the lock, if any.
pub(crate) const HOLDER: &str = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
    AND ((classid::int8 << 32) | objid::int8) = hashtextextended($1::text, 0)";

/// After a failed try: whether to ask again. Yes when nobody holds the lock
/// now, or when `old` does, this holder's own earlier session, which the
/// server has not yet seen end (a network fault the client noticed first):
/// that session is ended first. Any other holder is another runtime.
async fn may_ask_again(client: &Client, key: &str, old: i32) -> Result<bool> {
    let holder: Option<i32> = client
        .query_opt(HOLDER, &[&key])
        .await
        .map_err(storage)?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(storage)?;
    if holder != Some(old) {
        return Ok(holder.is_none());
    }
    client
        .query_one("SELECT pg_terminate_backend($1)", &[&old])
        .await
        .map_err(storage)?;
    Ok(true)
}

/// Take `node` over `schema`, asking again for up to `wait` while another
/// connection holds it (a killed holder's connection may take a moment to end).
pub(crate) async fn hold(config: &Config, schema: &str, node: &str, wait: Duration) -> Result<NodeHold> {
    NodeIdentity::validate_node_id(node)?;
    let mut config = config.clone();
    config
        .application_name(format!("cairn-node-{schema}"))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        // Probes as the server's side of the hold sends them: a dead path is
        // found in about 25 s, not the system's default of minutes.
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    let (client, ended) = connect(&config).await?;
    let key = key(schema, node);
    let deadline = tokio::time::Instant::now() + wait;
    let mut warned = false;
    loop {
        let (taken, pid) = try_lock(&client, &key).await?;
        if taken {
            let (state_tx, state) = watch::channel(HoldState::Held);
            let keeper = tokio::spawn(keep(config, key, node.to_string(), (client, ended, pid), state_tx));
            return Ok(NodeHold { state, keeper });
        }
        if tokio::time::Instant::now() + RETRY > deadline {
            return Err(CairnError::Unavailable(format!(
                "node id `{node}` is in use over schema `{schema}` by another live connection: two live \
                 runtimes under one node id would sweep each other's owner_bound work; stop the other one \
                 or give this one its own node id"
            )));
        }
        if !warned {
            tracing::warn!(
                node,
                wait_ms = wait.as_millis() as u64,
                "node id held by another connection; waiting up to {wait:?} for it to end before refusing to start"
            );
            warned = true;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Keep the hold: each time its connection ends, reconnect and take the id
/// again, until another runtime's session is found holding it.
async fn keep(
    config: Config,
    key: String,
    node: String,
    held: (Client, oneshot::Receiver<Option<String>>, i32),
    state: watch::Sender<HoldState>,
) {
    let (mut client, mut ended, mut pid) = held;
    loop {
        let why = (&mut ended).await.ok().flatten();
        drop(client);
        state.send_replace(HoldState::Retaking);
        tracing::warn!(node = %node, error = ?why, "the connection holding this node id ended; taking the id again");
        loop {
            let attempt = async {
                let (c, e) = connect(&config).await?;
                let (taken, new_pid) = try_lock(&c, &key).await?;
                let own = !taken && may_ask_again(&c, &key, pid).await?;
                Ok::<_, CairnError>((c, e, taken, new_pid, own))
            };
            match attempt.await {
                Ok((c, e, true, new_pid, _)) => {
                    (client, ended, pid) = (c, e, new_pid);
                    break;
                }
                Ok((_, _, false, _, true)) => {
                    tracing::debug!(node = %node, "this holder's old session still holds the node id; ending it");
                }
                Ok((_, _, false, _, false)) => {
                    tracing::error!(
                        node = %node,
                        "another runtime took this node id while its hold was down: it may sweep this \
                         runtime's owner_bound work, so this runtime must stop"
                    );
                    state.send_replace(HoldState::Lost);
                    return;
                }
                Err(e) => tracing::debug!(node = %node, error = %e, "taking the node id again failed"),
            }
            tokio::time::sleep(RETRY).await;
        }
        state.send_replace(HoldState::Held);
        tracing::info!(node = %node, "node id held again");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_core::SystemClock;

    use super::*;
    use crate::testing::{
        captured_logs, enabled, fresh, node_holder, retaken, terminate, test_client, NodeRival, TestSchema,
    };

    #[tokio::test]
    #[cfg_attr(
        cairn_no_postgres,
        ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
    )]
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

    /// A registry on a fresh schema holding `box-1`, a connection of the
    /// test's own, and the server process of the hold's session.
    async fn box_1_held() -> (NodeHold, Arc<crate::PostgresRegistry>, TestSchema, Client, i32) {
        let (registry, schema) = fresh(Arc::new(SystemClock)).await;
        let admin = test_client(&schema.url).await;
        let hold = registry.hold_node("box-1", Duration::ZERO).await.expect("hold");
        let first = node_holder(&admin, &schema.name, "box-1").await.expect("held");
        (hold, registry, schema, admin, first)
    }

    #[tokio::test]
    #[cfg_attr(
        cairn_no_postgres,
        ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
    )]
    async fn a_hold_whose_connection_ends_takes_the_id_again() {
        if !enabled() {
            return;
        }
        let (hold, registry, schema, admin, first) = box_1_held().await;
        assert!(terminate(&admin, first).await);
        // The keeper reconnects and takes the lock on a new session.
        retaken(&admin, &schema.name, "box-1", first).await;
        tokio::time::timeout(Duration::from_secs(5), hold.reached(|s| s == HoldState::Held))
            .await
            .expect("held again");
        let err = registry
            .hold_node("box-1", Duration::ZERO)
            .await
            .expect_err("still held: another runtime is refused");
        assert!(matches!(err, CairnError::Unavailable(_)), "{err}");
        // Dropping the hold releases the lock.
        drop(hold);
        let _again = registry
            .hold_node("box-1", Duration::from_secs(10))
            .await
            .expect("free once dropped");
    }

    /// A TCP relay to the test server whose client sides can be cut while
    /// their server sides stay open: a network fault the client sees and the
    /// server does not, so the server keeps the cut sessions (and their locks).
    struct Relay {
        addr: std::net::SocketAddr,
        cut: tokio::sync::watch::Sender<u64>,
        /// The server sides of cut connections, kept open.
        frozen: Arc<parking_lot::Mutex<Vec<tokio::net::TcpStream>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Relay {
        async fn to(server: std::net::SocketAddr) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (cut, cuts) = tokio::sync::watch::channel(0u64);
            let frozen = Arc::new(parking_lot::Mutex::new(Vec::new()));
            let kept = frozen.clone();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(server).await else {
                        return;
                    };
                    let mut cuts = cuts.clone();
                    cuts.mark_unchanged();
                    let kept = kept.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                            _ = cuts.changed() => kept.lock().push(upstream),
                        }
                    });
                }
            });
            Self {
                addr,
                cut,
                frozen,
                task,
            }
        }

        /// Close the client side of every connection open now; keep their
        /// server sides open.
        fn cut(&self) {
            self.cut.send_modify(|n| *n += 1);
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.task.abort();
            self.frozen.lock().clear();
        }
    }

    /// Whether the server still has a session with server process `pid`.
    async fn alive(admin: &Client, pid: i32) -> bool {
        admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .expect("pg_stat_activity")
            .get::<_, i64>(0)
            == 1
    }

    /// When the hold's connection ends on the client's side only (a network
    /// fault the server has not seen), the server still grants the lock to
    /// the hold's old session: the keeper ends that session and takes the id
    /// on a new one, rather than taking it for another runtime's.
    #[tokio::test]
    #[cfg_attr(
        cairn_no_postgres,
        ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
    )]
    async fn a_hold_whose_old_session_outlives_its_connection_ends_it_and_takes_the_id_again() {
        if !enabled() {
            return;
        }
        let schema = TestSchema::new("cairn_t");
        let config: Config = schema.url.parse().expect("test URL");
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            other => panic!("this test needs a TCP test URL, not {other:?}"),
        };
        let server = tokio::net::lookup_host((host.as_str(), port))
            .await
            .expect("resolve the test server")
            .next()
            .expect("an address");
        let relay = Relay::to(server).await;
        let direct = format!("{host}:{port}");
        assert!(
            schema.url.contains(&direct),
            "the test URL names `{direct}`: {}",
            schema.url
        );
        let relayed = schema.url.replacen(&direct, &relay.addr.to_string(), 1);
        let registry = crate::PostgresRegistry::connect_with(
            crate::PostgresOptions::new(&relayed, Arc::new(SystemClock)).with_schema(schema.name.clone()),
        )
        .await
        .expect("connect through the relay");
        let admin = test_client(&schema.url).await;
        let hold = registry.hold_node("box-1", Duration::ZERO).await.expect("hold");
        let first = node_holder(&admin, &schema.name, "box-1").await.expect("held");

        relay.cut();
        tokio::time::timeout(Duration::from_secs(10), hold.reached(|s| s == HoldState::Retaking))
            .await
            .expect("the hold sees its connection end");
        tokio::time::timeout(Duration::from_secs(10), hold.reached(|s| s == HoldState::Held))
            .await
            .expect("held again");
        let second = retaken(&admin, &schema.name, "box-1", first).await;
        assert_ne!(second, first);
        // The relay still holds the old session's socket open, so the server
        // saw no end of it (keepalives would take 25 s): the keeper ended it.
        assert!(!alive(&admin, first).await, "the keeper ended its old session");
        assert!(hold.is_held());
        drop(hold);
        drop(registry);
        drop(relay);
    }

    #[tokio::test]
    #[cfg_attr(
        cairn_no_postgres,
        ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
    )]
    async fn a_hold_taken_by_another_while_its_connection_was_down_is_lost() {
        if !enabled() {
            return;
        }
        let (hold, _registry, schema, admin, first) = box_1_held().await;
        // Another runtime queues for the lock; the server grants it the
        // moment the holder's session ends, before the holder can reconnect.
        let rival = NodeRival::queue(&schema.url, &schema.name, "box-1").await;
        assert!(terminate(&admin, first).await);
        let rival = rival.holds().await;
        assert_eq!(node_holder(&admin, &schema.name, "box-1").await, Some(rival.pid));
        tokio::time::timeout(Duration::from_secs(20), hold.lost())
            .await
            .expect("the hold reports the id lost");
        assert_eq!(hold.state(), HoldState::Lost);
        assert!(!hold.is_held());
        assert_eq!(
            node_holder(&admin, &schema.name, "box-1").await,
            Some(rival.pid),
            "the rival keeps it"
        );
    }

    #[tokio::test]
    #[cfg_attr(
        cairn_no_postgres,
        ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
    )]
    async fn waiting_for_a_held_node_id_says_how_long_it_waits() {
        if !enabled() {
            return;
        }
        let logs = captured_logs(|writer| {
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .init();
        });
        let (registry, _schema) = fresh(Arc::new(SystemClock)).await;
        let _held = registry
            .hold_node("box-told", Duration::ZERO)
            .await
            .expect("first hold");
        registry
            .hold_node("box-told", Duration::from_millis(900))
            .await
            .expect_err("a second hold of the same id");
        let said = logs.text();
        assert!(
            said.lines().any(|l| l.contains("WARN")
                && l.contains("node=\"box-told\"")
                && l.contains("node id held by another connection; waiting up to 900ms for it to end before refusing")),
            "{said}"
        );
    }
}
