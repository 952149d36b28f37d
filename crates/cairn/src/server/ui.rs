//! `/ui`: the dashboard (`cairn-dashboard`), given this server's auth so a
//! token sees the same processes there as through the API.

use cairn_core::{async_trait, Processes};
use cairn_dashboard::{Access, Viewer};

use super::auth::{self, Auth, Caller};

/// The server's tokens and visibility rule, as the dashboard asks for them.
pub struct UiAccess {
    auth: Auth,
    processes: Processes,
}

impl UiAccess {
    /// Over the server's configured tokens and runtime.
    pub fn new(auth: Auth, processes: Processes) -> Self {
        Self { auth, processes }
    }
}

fn caller_of(viewer: &Viewer) -> Caller {
    match viewer {
        Viewer::Host => Caller::Host,
        Viewer::Session(id) => Caller::Session(id.clone()),
    }
}

#[async_trait]
impl Access for UiAccess {
    fn is_open(&self) -> bool {
        self.auth.is_open()
    }

    fn resolve(&self, token: &str) -> Option<Viewer> {
        match self.auth.resolve(Some(token)).ok()? {
            Caller::Host => Some(Viewer::Host),
            Caller::Session(id) => Some(Viewer::Session(id)),
        }
    }

    async fn check_visible(&self, viewer: &Viewer, id: &str) -> cairn_core::Result<()> {
        auth::visible(&self.processes, &caller_of(viewer), id).await
    }
}
