// Build-time markings of what this machine can run tests against.
//
// `cfg(cairn_no_postgres)`: the same marking as cairn-postgres's build script
// (the binary's crate has PostgreSQL tests too: bench figures and limits).
//
// `cfg(cairn_no_browser)`: no chromedriver (`CAIRN_CHROMEDRIVER`, or
// `chromedriver` on the PATH) and not in CI, so the dashboard's browser tests
// are built `#[ignore]`d and show as ignored rather than passed. Under
// `CI=true` a missing browser fails them instead.

mod postgres {
    include!("../cairn-postgres/build.rs");

    pub fn mark() {
        main();
    }
}

fn main() {
    postgres::mark();
    println!("cargo::rerun-if-env-changed=CAIRN_CHROMEDRIVER");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rustc-check-cfg=cfg(cairn_no_browser)");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !ci && !chromedriver_found() {
        println!("cargo::rustc-cfg=cairn_no_browser");
    }
}

fn chromedriver_found() -> bool {
    if let Some(p) = std::env::var_os("CAIRN_CHROMEDRIVER") {
        return std::path::Path::new(&p).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("chromedriver").is_file()))
}
