// The same `cfg(cairn_no_postgres)` marking as cairn-postgres's build script:
// the binary's crate has PostgreSQL tests too (bench figures and limits).
include!("../cairn-postgres/build.rs");
