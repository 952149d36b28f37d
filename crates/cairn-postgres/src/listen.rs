//! The cross-node change source: LISTEN on cairn's channel and feed every
//! notification into a [`ChangeHub`], so awaiters and idle workers on this node
//! wake for writes made on any node.
//!
//! A dropped connection is reopened with a backoff. Notifications sent while
//! it was down are lost; the hub's consumers cover that gap with their own
//! fallback (the awaiter's backoff reads, the driver's sweep), and a reconnect
//! announces work so idle workers look at once.

use std::time::Duration;

use cairn_core::ChangeHub;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Config, NoTls};

/// Stops the listener when dropped.
pub(crate) struct ListenerGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Feed `hub` from `channel` until the guard is dropped. `generation` counts
/// successful LISTENs (1 after the first, 2 after the first reconnect, ...).
pub(crate) fn spawn(
    config: Config,
    schema: String,
    channel: String,
    hub: ChangeHub,
    generation: watch::Sender<u64>,
) -> ListenerGuard {
    let task = tokio::spawn(async move {
        let mut delay = Duration::from_millis(50);
        loop {
            match listen_once(&config, &schema, &channel, &hub, &generation).await {
                Ok(()) => {
                    tracing::warn!(channel, "postgres notification connection ended; reconnecting");
                    delay = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::warn!(channel, error = %crate::conn::describe(&e), "postgres LISTEN failed; retrying");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    });
    ListenerGuard { task }
}

/// One connection's life: LISTEN, then forward notifications until it ends.
async fn listen_once(
    config: &Config,
    schema: &str,
    channel: &str,
    hub: &ChangeHub,
    generation: &watch::Sender<u64>,
) -> Result<(), tokio_postgres::Error> {
    let mut config = config.clone();
    // The listener only reads: a path that dies without a FIN or RST (a NAT's
    // idle timeout, a lost host) is found by keepalive probes in about 25 s,
    // and the reconnect and its resync follow, rather than after the
    // system's two idle hours.
    config
        .application_name(format!("cairn-listen-{schema}"))
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(10))
        .keepalives_interval(std::time::Duration::from_secs(5))
        .keepalives_retries(3);
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "notification connection error");
                    break;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN \"{channel}\"")).await?;
    generation.send_modify(|g| *g += 1);
    // Whatever was announced while no connection listened is unknown: every
    // waiter reads again and the driver looks for work.
    hub.resync();
    while let Some(payload) = rx.recv().await {
        deliver(hub, &payload);
    }
    driver.abort();
    drop(client);
    Ok(())
}

/// Hand one payload (see `uow::notify_payloads`) to the hub.
pub(crate) fn deliver(hub: &ChangeHub, payload: &str) {
    for line in payload.split('\n') {
        if line == "w" {
            hub.notify_work();
        } else if line == "f" {
            // A node pruned: the hub's recent ends may name processes gone.
            hub.forget_ends();
        } else if let Some((id, seq)) = line.split_once('\t') {
            if let Ok(seq) = seq.parse::<u64>() {
                hub.publish(id, seq);
            }
        }
    }
}
