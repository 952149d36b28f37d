//! `docs/reference.md` is what `cairn::reference::render` makes of the code: routes
//! and their answers, error codes and statuses, built-in tools and their args,
//! event types and wire shapes.

use std::path::PathBuf;

#[test]
fn docs_reference_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/reference.md");
    let rendered = cairn::reference::render();
    // Regenerating is for a developer's machine: under CI the file on disk is
    // what is checked, whatever the environment says.
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if std::env::var_os("CAIRN_UPDATE_REFERENCE").is_some() && !ci {
        std::fs::write(&path, &rendered).expect("write docs/reference.md");
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == rendered,
        "docs/reference.md is out of date: run `CAIRN_UPDATE_REFERENCE=1 cargo test -p cairn --test reference` \
         (with CI unset: under CI=true the file is only checked)"
    );
}

#[test]
fn the_reference_covers_every_route_the_server_documents() {
    let rendered = cairn::reference::render();
    for route in [
        "`/v1/processes`",
        "`/v1/processes/{id}/signals/{name}`",
        "`/v1/changes`",
        "`/healthz`",
    ] {
        assert!(rendered.contains(route), "{route}");
    }
    for code in [
        "`unknown_process` | 404",
        "`registration_conflict` | 409",
        "`no_longer_retained` | 410",
    ] {
        assert!(rendered.contains(code), "{code}");
    }
    for tool in ["### `echo`", "### `shell`", "### `sleep`", "### `wait_signal`"] {
        assert!(rendered.contains(tool), "{tool}");
    }
    assert!(rendered.contains("| `process.completed` |"));
    assert!(rendered.contains("| `shell.output` |"));
}
