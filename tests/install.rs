//! What a packager installs beside the binary: shell completions and the manual page, both
//! generated from the same flag definitions as `--help`, checked by the programs that read them.

use std::process::Command;

use crate::util::*;

/// `s3uring ARGS`'s standard output, which must be a success.
fn generated(args: &[&str]) -> String {
    let out = run(bare_cmd().args(args));
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn the_bash_completion_script_parses_and_completes_flags_and_subcommands() {
    let script = generated(&["completions", "bash"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s3uring.bash");
    std::fs::write(&path, &script).expect("write");
    let syntax = Command::new("bash").arg("-n").arg(&path).output().expect("bash");
    assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));
    // Sourced, it registers a completion for s3uring, and completing `s3uring --wo` offers
    // --workers and `s3uring ch` the check subcommand.
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let probe = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; \
             _s3uring s3uring '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display(),
            words.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len().saturating_sub(2)],
        );
        let out = Command::new("bash").arg("-c").arg(&probe).output().expect("bash");
        assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(complete("s3uring --wo").lines().any(|l| l == "--workers"), "{}", complete("s3uring --wo"));
    assert!(complete("s3uring ch").lines().any(|l| l == "check"), "{}", complete("s3uring ch"));
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand_and_flag() {
    // zsh and fish are not installed here to read them; their scripts must at least carry
    // what the bash one completes.
    for shell in ["zsh", "fish"] {
        let script = generated(&["completions", shell]);
        for word in ["workers", "queue", "verify", "no-verify", "check", "serve", "completions"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let out = run(bare_cmd().args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
    assert!(stderr(&out).contains("tcsh"), "{}", stderr(&out));
}

#[test]
fn the_manual_page_renders_with_man() {
    let page = generated(&["man"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s3uring.1");
    std::fs::write(&path, &page).expect("write");
    let out = Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(&path)
        .env("MANWIDTH", "100")
        .output()
        .expect("man (Debian's man-db, which .ci/test installs)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "man -l: {}", String::from_utf8_lossy(&out.stderr));
    for word in ["s3uring", "--workers", "--queue", "--no-verify", "SOURCE", "DEST", "check", "completions"] {
        assert!(text.contains(word), "no {word} in the rendered page:\n{text}");
    }
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(!warnings.contains("warning"), "groff: {warnings}");
}
