//! Shared by the `sealroom verify` process tests: the repository's test data and the binary under test.

use std::process::{Command, Output};

/// A path under `verifier/testdata/`.
pub fn td(path: &str) -> String {
    format!("{}/../testdata/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `sealroom verify ARGS` (without RUST_BACKTRACE, so stderr is the one-line reason only).
pub fn sealroom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sealroom"))
        .arg("verify")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

/// stdout and stderr as text.
#[allow(dead_code, reason = "not every test file reads both")]
pub fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// stderr, one reason per line.
#[allow(dead_code, reason = "not every test file reads stderr by lines")]
pub fn stderr_lines(o: &Output) -> Vec<String> {
    text(o).1.lines().map(str::to_owned).collect()
}
