//! The sans-IO rule (DESIGN.md): protocol cores never read the clock, draw OS randomness, or
//! touch sockets or tokio. Clippy bans the clock and RNG calls; this test also catches I/O
//! imports, and it runs in the normal test suite.

use std::fs;
use std::path::Path;

/// Directories holding protocol cores.
const CORE_DIRS: &[&str] = &[
    "src/link",
    "src/overlay",
    "src/reach",
    "transports/xmpp/src/core",
    "transports/xmpp/src/relay",
    "transports/xmpp/src/rendezvous",
    "transports/xmpp/src/wire",
];

const BANNED: &[&str] = &[
    "Instant::now",
    "SystemTime::now",
    "tokio::",
    "UdpSocket",
    "TcpStream",
    "TcpListener",
    "lookup_host",
    "ToSocketAddrs",
    "rand::rng()",
    "thread_rng",
    "rand::random(",
    "std::fs",
    "std::thread",
];

/// Source files of the cores, without their unit tests and test fixtures (which may use a
/// real clock as their virtual epoch).
fn core_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let test_only = |name: &str| matches!(name, "tests" | "tests.rs" | "testnet.rs");
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if test_only(&name) {
            continue;
        }
        if path.is_dir() {
            core_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn protocol_cores_do_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in CORE_DIRS {
        core_files(&root.join(dir), &mut files);
    }
    assert!(files.len() >= 10, "core sources not found: {files:?}");
    let mut violations = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        // Inline unit tests at the bottom of a file may use a real clock as their epoch.
        let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or(&text);
        let code = code
            .split("#[cfg(test)]\n#[allow(clippy::disallowed_methods)]")
            .next()
            .unwrap_or(code);
        for (n, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap_or("");
            for banned in BANNED {
                if line.contains(banned) {
                    violations.push(format!(
                        "{}:{}: {banned}",
                        file.strip_prefix(root).unwrap().display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "sans-IO violations:\n{}",
        violations.join("\n")
    );
}
