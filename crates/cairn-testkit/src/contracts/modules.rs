//! The script module store (SPEC §14): content-addressed, immutable modules.

use cairn_core::script::module_ref;
use cairn_core::{Module, ModuleInfo};

use crate::harness::{ok, Harness};
use crate::StoreFactory;

fn module(source: &str, name: Option<&str>, exports: &[&str], created_at_ms: u64) -> Module {
    Module {
        info: ModuleInfo {
            module_ref: module_ref(source),
            name: name.map(str::to_string),
            exports: exports.iter().map(|e| e.to_string()).collect(),
            created_at_ms,
        },
        source: source.to_string(),
    }
}

/// `put_module` stores a module under the SHA-256 of its source and is
/// idempotent: the same source again answers the stored module (its first name
/// and time) with `created: false`. `list_modules` answers them without sources
/// in ref order, paged; `get_module` answers the source; an unknown ref is
/// `unknown_module`, a malformed one `invalid_id`, a ref that is not the
/// address of its source `invalid_request` (and nothing is stored).
pub async fn module_store_round_trip(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let reg = h.registry();
    let a = module(
        "export async function main(ctx) { return 1; }",
        Some("a.js"),
        &["main"],
        1_000,
    );
    let b = module("export async function two(ctx) { return 2; }", None, &["two"], 2_000);
    let put = ok(reg.put_module(&a).await, "put_module a");
    assert!(put.created, "the first put stores the module");
    assert_eq!(put.module, a.info);
    assert!(a.info.module_ref.starts_with("module:sha256:"));

    let again = module(&a.source, Some("renamed.js"), &["main"], 9_000);
    let put = ok(reg.put_module(&again).await, "put_module a again");
    assert!(!put.created, "the same source is stored already");
    assert_eq!(
        put.module, a.info,
        "the stored module answers, not the new name or time"
    );

    assert!(ok(reg.put_module(&b).await, "put_module b").created);
    let mut expected = vec![a.info.clone(), b.info.clone()];
    expected.sort_by(|x, y| x.module_ref.cmp(&y.module_ref));
    assert_eq!(ok(reg.list_modules(None, None).await, "list_modules"), expected);
    let first = ok(reg.list_modules(None, Some(1)).await, "list page 1");
    assert_eq!(first, expected[..1]);
    let rest = ok(
        reg.list_modules(Some(&first[0].module_ref), Some(10)).await,
        "list page 2",
    );
    assert_eq!(rest, expected[1..]);
    h.rejects("invalid_page", "page of 0", reg.list_modules(None, Some(0)))
        .await;

    assert_eq!(ok(reg.get_module(&a.info.module_ref).await, "get_module a"), a);
    assert_eq!(ok(reg.get_module(&b.info.module_ref).await, "get_module b"), b);
    let missing = format!("module:sha256:{}", "0".repeat(64));
    h.rejects("unknown_module", "missing module", reg.get_module(&missing))
        .await;
    h.rejects("invalid_id", "malformed ref", reg.get_module("module:md5:00"))
        .await;

    let mut forged = module("export async function x() {}", None, &["x"], 3_000);
    forged.info.module_ref = b.info.module_ref.clone();
    h.rejects("invalid_request", "ref of another source", reg.put_module(&forged))
        .await;
    assert_eq!(ok(reg.get_module(&b.info.module_ref).await, "b unchanged"), b);
    let nul = module(
        "export async function main(ctx) { return '\0'; }",
        None,
        &["main"],
        4_000,
    );
    h.rejects("invalid_module", "a NUL in the source", reg.put_module(&nul))
        .await;
    assert_eq!(ok(reg.list_modules(None, None).await, "still two").len(), 2);
}
