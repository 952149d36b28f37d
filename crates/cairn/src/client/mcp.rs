//! `cairn mcp`: the MCP tools (crate `cairn-mcp`) on stdin/stdout, each call
//! forwarded to a cairn server over its HTTP API with the CLI's `--server` and
//! `--token`. The server decides what the token may see; this side only relays.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{Outcome, StartRequest};
use cairn_mcp::{Answer, Cairn, Failure, ListArgs, McpServer};
use serde_json::{json, Value};

use super::http::{query, segment, Client, ClientError, AWAIT_GRACE};

/// Serve MCP on stdio until the client closes it.
pub async fn serve(client: &Client) -> Result<ExitCode, ClientError> {
    // A server that cannot be reached, a path after its address or a missing
    // token would otherwise show only at the first tool call: said on stderr
    // (the MCP client's log) at once, and the tools are served all the same
    // (the server may come up later).
    let probe = client.clone();
    tokio::spawn(async move {
        if let Err(e) = probe.get("/v1/processes?limit=1").await {
            let hint = e.hint().map(|h| format!(" ({h})")).unwrap_or_default();
            let said = super::shown(&format!("{e}{hint}"));
            // A closed stderr (the MCP client's log gone) must not panic.
            let _ = super::output::errln!("cairn mcp: the server does not answer as it should: {said}");
        }
    });
    let server = McpServer::new(Arc::new(Forwarding { client: client.clone() }));
    cairn_mcp::serve_stdio(server)
        .await
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

struct Forwarding {
    client: Client,
}

fn failure(e: ClientError) -> Failure {
    // What the CLI would suggest, said in the tool's error too.
    let hint = e.hint();
    let failure = bare_failure(e);
    match hint {
        Some(hint) => {
            let message = format!("{} ({hint})", failure.message);
            Failure { message, ..failure }
        }
        None => failure,
    }
}

fn bare_failure(e: ClientError) -> Failure {
    match e {
        ClientError::Api {
            code,
            message,
            tombstone,
            ..
        } => Failure::new(code, message).with_tombstone(tombstone),
        ClientError::Refused { code, message } => Failure::new(code, message),
        e @ (ClientError::Unreachable { .. }
        | ClientError::NoAnswer { .. }
        | ClientError::Interrupted(_)
        | ClientError::NotJson { .. }
        | ClientError::NotCairn { .. }) => Failure::new("unavailable", e.to_string()),
        ClientError::Http(e) => Failure::new("unavailable", format!("cannot reach the cairn server: {e}")),
        e @ ClientError::LostAnswer(_) => Failure::new("outcome_unknown", e.to_string()),
        ClientError::Usage(message) => Failure::new("invalid_request", message),
        // The forwarder writes no output of its own: never met here (said
        // with a code of the closed set all the same).
        e @ ClientError::Output { .. } => Failure::new("unavailable", e.to_string()),
    }
}

/// A write whose request went out and whose answer was lost may have been
/// done: `outcome_unknown` (read the state first), not `unavailable`
/// (nothing was done), which is kept for a server never reached.
fn write_failure(e: ClientError) -> Failure {
    match e {
        // A proxy's 502/503/504 before the server, or a success whose body
        // is not what cairn answers, came after the request went out.
        e @ (ClientError::Http(_)
        | ClientError::LostAnswer(_)
        | ClientError::NoAnswer { .. }
        | ClientError::Interrupted(_)
        | ClientError::NotCairn { status: 502..=504, .. }
        | ClientError::NotJson { status: 200..=299, .. }) => Failure::new(
            "outcome_unknown",
            format!("the answer was lost after the request was sent; read the state before retrying: {e}"),
        ),
        e => failure(e),
    }
}

/// A wait the server took and then dropped (it stopped, or was killed) is
/// said as `cairn await` says it, in words and not the HTTP client's: the
/// process may still run, and the wait can be asked again once the server is
/// back. Still `unavailable`: nothing was done.
fn await_failure(id: &str, e: ClientError) -> Failure {
    match e {
        ClientError::Http(_) | ClientError::LostAnswer(_) => Failure::new(
            "unavailable",
            format!(
                "the server ended the wait ({}): call process_await for {id} again once the server is back",
                e.server_state()
            ),
        ),
        e => failure(e),
    }
}

fn proc_path(id: &str) -> String {
    format!("/v1/processes/{}", segment(id))
}

fn schedule_path(id: &str) -> String {
    format!("/v1/schedules/{}", segment(id))
}

impl Forwarding {
    async fn get_json(&self, path: &str) -> Answer {
        self.client.get(path).await.map_err(failure)
    }

    async fn post_json(&self, path: &str, body: Value) -> Answer {
        self.client
            .post(path, &body)
            .await
            .map(|(_, v)| v)
            .map_err(write_failure)
    }
}

#[cairn_core::async_trait]
impl Cairn for Forwarding {
    async fn start(&self, request: StartRequest) -> Answer {
        let body = serde_json::to_value(request)
            .map_err(|e| Failure::new("invalid_request", format!("start request: {e}")))?;
        self.post_json("/v1/processes", body).await
    }

    async fn get(&self, id: &str) -> Answer {
        self.get_json(&proc_path(id)).await
    }

    async fn list(&self, filter: &ListArgs) -> Answer {
        self.get_json(&format!("/v1/processes?{}", query(filter.query_pairs())))
            .await
    }

    async fn events(&self, id: &str, after: u64, limit: Option<usize>) -> Answer {
        let mut pairs = vec![("after", after.to_string())];
        pairs.extend(limit.map(|n| ("limit", n.to_string())));
        self.get_json(&format!("{}/events?{}", proc_path(id), query(pairs)))
            .await
    }

    async fn await_terminal(&self, id: &str, timeout: Duration) -> Answer {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let path = format!("{}/await?{}", proc_path(id), query([("timeout_ms", ms.to_string())]));
        self.client
            .get_within(&path, timeout.saturating_add(AWAIT_GRACE))
            .await
            .map_err(|e| await_failure(id, e))
    }

    async fn signal(&self, id: &str, name: &str, signal_id: &str, payload: Value) -> Answer {
        // Sent as given, the name unchecked: the server checks it after
        // whether the token sees the process, so a session token is told of
        // another's process what `/mcp` tells it (`unknown_process`), not
        // that the name is bad.
        let body = json!({"signal_id": signal_id, "payload": payload});
        self.post_json(&format!("{}/signals/{}", proc_path(id), segment(name)), body)
            .await
    }

    async fn cancel(&self, id: &str, reason: Option<String>) -> Answer {
        let body = match reason {
            Some(r) => json!({"reason": r}),
            None => json!({}),
        };
        self.post_json(&format!("{}/cancel", proc_path(id)), body).await
    }

    async fn complete(&self, id: &str, outcome: Outcome, authority: Option<String>) -> Answer {
        let mut body = json!({"outcome": outcome});
        if let Some(a) = authority {
            body["authority"] = Value::String(a);
        }
        self.post_json(&format!("{}/complete", proc_path(id)), body).await
    }

    async fn module_put(&self, source: String, name: Option<String>) -> Answer {
        let mut body = json!({ "source": source });
        if let Some(n) = name {
            body["name"] = Value::String(n);
        }
        self.post_json("/v1/modules", body).await
    }

    async fn schedule_list(&self, after: Option<&str>, limit: Option<usize>) -> Answer {
        let mut pairs = Vec::new();
        pairs.extend(after.map(|a| ("after", a.to_string())));
        pairs.extend(limit.map(|n| ("limit", n.to_string())));
        self.get_json(&format!("/v1/schedules?{}", query(pairs))).await
    }

    async fn schedule_pause(&self, id: &str) -> Answer {
        self.post_json(&format!("{}/pause", schedule_path(id)), json!({})).await
    }

    async fn schedule_resume(&self, id: &str) -> Answer {
        self.post_json(&format!("{}/resume", schedule_path(id)), json!({}))
            .await
    }

    /// Asked of the server (one read of a schedule page): offered only when
    /// it answers. A session token is refused there, as its calls of the
    /// schedule tools would be; a bad token, or a server that cannot be
    /// reached, does not say what the token may do, so only the tools every
    /// token may use are offered.
    async fn offers_schedules(&self) -> bool {
        self.get_json("/v1/schedules?limit=1").await.is_ok()
    }
}
