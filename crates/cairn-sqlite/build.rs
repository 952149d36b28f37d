// Marks a build whose tests cannot trace system calls: with no `strace` on
// the PATH (and not in CI, where `.ci/run` installs it and its absence fails
// the test instead), the test that checks how commits sync the WAL is built
// `#[ignore]`d under `cfg(cairn_no_strace)`, so it shows as ignored rather
// than passed.

fn main() {
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rustc-check-cfg=cfg(cairn_no_strace)");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let strace = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("strace").is_file()));
    if !ci && !strace {
        println!("cargo::rustc-cfg=cairn_no_strace");
    }
}
