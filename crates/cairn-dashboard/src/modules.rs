//! Script modules (SPEC §14, §17): each stored module's exports and source,
//! and the scripts started from each export. Modules are listed to every
//! viewer, as on the API; the scripts shown are those the viewer may list.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cairn_core::{Module, ModuleInfo, ProcessInput};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{Viewer, Visitor};
use crate::input::{NoParams, Params, Refusal, UiQuery};
use crate::list::{definition_href, encode_path, newest_of_definition};
use crate::pages::{self, Nav};
use crate::process::{status_for, IdPath};
use crate::{time, Shared};

/// Modules shown per page.
const PAGE: usize = 100;
/// Scripts shown inline per export on a module's page (the rest are a link away).
const SCRIPTS_SHOWN: usize = 10;

/// Exports whose newest scripts the module page lists. Each listing walks
/// the definition index, so a module of thousands of exports took minutes of
/// a core to render; past these, an export's link above leads to its
/// processes.
const EXPORTS_LISTED: usize = 20;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ModulesQuery {
    /// Only modules with a greater ref (the previous page's last).
    after: Option<String>,
}

impl Params for ModulesQuery {
    const KEYS: &'static [&'static str] = &["after"];
}

/// `GET /ui/modules?after=REF`.
pub(crate) async fn page(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    q: Result<UiQuery<ModulesQuery>, Refusal>,
) -> Response {
    let mut status = StatusCode::OK;
    let content = match q {
        Err(refusal) => {
            status = refusal.status;
            refusal.fragment()
        }
        Ok(UiQuery(q)) => {
            let after = q.after.filter(|a| !a.is_empty());
            // A cursor that is no module ref is refused as the API refuses
            // it (`GET /v1/modules?after=`), not read as a place to start.
            let listed = match after.as_deref().map(checked_cursor).transpose() {
                Ok(after) => d.processes.list_modules(after, Some(PAGE)).await,
                Err(e) => Err(e),
            };
            match listed {
                Ok(modules) => table(&modules, after.is_some()),
                Err(e) => {
                    status = status_for(&e);
                    pages::error_fragment(e.code(), &e.to_string())
                }
            }
        }
    };
    let body = html! {
        h1 { "Modules" }
        p.hint {
            "Script modules, by content address. Store one with "
            code { "cairn module put FILE" } " or " code { "POST /v1/modules" } "."
        }
        (content)
    };
    (status, pages::layout("Modules", &visitor, Nav::Modules, body)).into_response()
}

/// `after` when it is a module ref; else `invalid_id` in the words of
/// `GET /v1/modules`.
fn checked_cursor(after: &str) -> Result<&str, cairn_core::CairnError> {
    cairn_core::script::validate_module_ref(after).map_err(|e| match e {
        cairn_core::CairnError::InvalidId(why) => {
            cairn_core::CairnError::InvalidId(format!("`after` is the last module ref of a page: {why}"))
        }
        other => other,
    })?;
    Ok(after)
}

fn table(modules: &[ModuleInfo], paged: bool) -> Markup {
    let next = (modules.len() == PAGE)
        .then(|| modules.last().map(|m| m.module_ref.clone()))
        .flatten();
    html! {
        @if modules.is_empty() {
            p.empty { @if paged { "No more modules." } @else { "No module stored." } }
        } @else {
            div.tablewrap { table.modules {
                thead { tr { th { "Module" } th { "Name" } th { "Exports" } th { "Stored" } } }
                tbody {
                    @for m in modules {
                        tr data-module=(m.module_ref) {
                            td.id { a href={ "/ui/modules/" (encode_path(&m.module_ref)) } { code { (pages::id(&m.module_ref)) } } }
                            td { @match &m.name { Some(n) => (pages::id(n)), None => span.hint { "none" } } }
                            td.exports {
                                @for (i, e) in m.exports.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    code { (pages::id(e)) }
                                }
                                @if m.exports.is_empty() { span.hint { "none" } }
                            }
                            td { (time::when(m.created_at_ms)) }
                        }
                    }
                }
            } }
        }
        nav.pager {
            @if paged { a href="/ui/modules" { "First" } " " }
            @if let Some(after) = next {
                a rel="next" href={ "/ui/modules?after=" (encode_path(&after)) } { "More" }
            }
        }
    }
}

/// `GET /ui/modules/{ref}`.
pub(crate) async fn one(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    IdPath(module_ref): IdPath,
    query: Result<UiQuery<NoParams>, Refusal>,
) -> Response {
    if let Err(refusal) = query {
        let body = html! {
            p.crumbs { a href="/ui/modules" { "← Modules" } }
            h1.pid { "Module " code { (pages::id(&module_ref)) } }
            (refusal.fragment())
        };
        let title = format!("Module {module_ref}");
        return (refusal.status, pages::layout(&title, &visitor, Nav::Modules, body)).into_response();
    }
    // Checked here too, so a malformed ref is said the same whatever the store.
    let found = match cairn_core::script::validate_module_ref(&module_ref) {
        Ok(()) => d.processes.get_module(&module_ref).await,
        Err(e) => Err(e),
    };
    let module = match found {
        Ok(m) => m,
        Err(e) => return refused(&visitor, &module_ref, &e),
    };
    let title = module.info.name.clone().unwrap_or_else(|| "Module".to_string());
    let scripts = scripts(&d, &visitor.viewer, &module).await;
    let info = &module.info;
    let body = html! {
        p.crumbs { a href="/ui/modules" { "← Modules" } }
        h1 { (pages::id(&title)) }
        dl.facts {
            dt { "Ref" } dd.id { code.module-ref { (pages::id(&info.module_ref)) } }
            dt { "Stored" } dd { (time::when(info.created_at_ms)) }
            dt { "Source" } dd { (module.source.len()) " bytes" }
        }
        h2 { "Exports " span.count { "(" (info.exports.len()) ")" } }
        @if info.exports.is_empty() {
            p.empty { "No exported function: nothing to start." }
        } @else {
            ul.exports {
                @for e in &info.exports {
                    li data-export=(e) {
                        code { (pages::id(e)) } " "
                        a.scripts href=(definition_href(&definition(info, e))) { "its processes" }
                    }
                }
            }
        }
        h2 { "Scripts started from it" }
        p.hint { "The newest " (SCRIPTS_SHOWN) " of each export, in any status; " code { "definition" } " filter "
            code { "script:{module_ref}#{export}" } "."
            @if info.exports.len() > EXPORTS_LISTED {
                " Listed for the first " (EXPORTS_LISTED) " exports of " (info.exports.len())
                    "; the others' processes are behind their links above."
            }
        }
        (scripts)
        h2 { "Source" }
        pre.source { (pages::text(&module.source)) }
    };
    (StatusCode::OK, pages::layout(&title, &visitor, Nav::Modules, body)).into_response()
}

/// A module's page for a ref that names none: 400 for a ref that is not a
/// module ref, 404 for one no module is stored under, as a process's page
/// answers for a bad or unknown id; the server's error verbatim, and what it
/// means in words.
pub(crate) fn refused(visitor: &Visitor, module_ref: &str, e: &cairn_core::CairnError) -> Response {
    let meaning = match e.code() {
        "invalid_id" => Some("This is not a valid module ref."),
        "unknown_module" => Some("No module with this ref is stored."),
        _ => None,
    };
    let body = html! {
        p.crumbs { a href="/ui/modules" { "← Modules" } }
        h1.pid { "Module " code { (pages::id(module_ref)) } }
        (pages::error_fragment(e.code(), &e.to_string()))
        @if let Some(m) = meaning { p.hint.meaning { (m) } }
    };
    let title = format!("Module {module_ref}");
    (status_for(e), pages::layout(&title, visitor, Nav::Modules, body)).into_response()
}

/// `script:{module_ref}#{export}`, as the process input computes it.
fn definition(info: &ModuleInfo, export: &str) -> String {
    ProcessInput::Script {
        module_ref: info.module_ref.clone(),
        process_name: export.to_string(),
        args: Value::Null,
    }
    .definition()
}

/// The newest scripts of each export the viewer may list; a listing's error
/// is shown in place of that export's table.
async fn scripts(d: &crate::Inner, viewer: &Viewer, module: &Module) -> Markup {
    let mut sections = Vec::new();
    for e in module.info.exports.iter().take(EXPORTS_LISTED) {
        let def = definition(&module.info, e);
        let listed = newest_of_definition(&d.processes, viewer, &def, SCRIPTS_SHOWN).await;
        sections.push((e, def, listed));
    }
    html! {
        @for (e, def, listed) in &sections {
            section.scripts data-export=(e) {
                h3 { code { (pages::id(e)) } }
                @match listed {
                    Ok((rows, more)) => {
                        (crate::sessions::records(rows.iter().map(|r| (&r.record, None))))
                        @if *more {
                            p { a href=(definition_href(def)) { "All processes of " code { (pages::id(e)) } " →" } }
                        }
                    }
                    Err(err) => (pages::error_fragment(err.code(), &err.to_string())),
                }
            }
        }
    }
}
