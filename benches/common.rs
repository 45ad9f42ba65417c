//! Helpers shared by the benches.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// The bench's command line without the `--bench` that `cargo bench` adds (no bench takes it).
fn args() -> impl Iterator<Item = String> {
    std::env::args().filter(|a| a != "--bench")
}

/// The bench's flags.
pub fn opts<T: clap::Parser>() -> T {
    T::parse_from(args())
}

/// The flags the bench was given, as the results quote them.
pub fn command_line() -> String {
    args().skip(1).collect::<Vec<_>>().join(" ")
}

/// A client of the endpoint on 127.0.0.1, which a proxy the machine names could not reach:
/// every client (s3uring, the AWS CLI, s5cmd, rclone) is told to connect directly.
pub fn direct(c: &mut Command) -> &mut Command {
    c.env("NO_PROXY", "127.0.0.1,localhost").env("no_proxy", "127.0.0.1,localhost")
}

pub fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// CPU seconds (user+sys) of another process, from /proc.
pub fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(i) = stat.rfind(')') else { return 0.0 };
    let f: Vec<&str> = stat[i + 2..].split_whitespace().collect();
    let t = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// This process's CPU seconds.
pub fn self_cpu() -> f64 {
    proc_cpu(std::process::id())
}

/// The floor a copier is measured against on a file system: one thread creating the same
/// tree with plain syscalls (temporary name, write, rename, close), in listing order.
pub fn bare_loop(dest: &Path, objects: u64, size: u64) {
    use std::io::Write;
    let data = vec![7u8; size as usize];
    let mut keys: Vec<String> = (0..objects).map(|i| format!("p{:04}/obj{i:08}", i % 100)).collect();
    keys.sort();
    for (n, key) in keys.iter().enumerate() {
        let path = dest.join(key);
        let dir = path.parent().expect("key has a directory");
        if n == 0 || !dir.exists() {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        let tmp = dir.join(format!(".tmp.{n}"));
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).expect("create");
        f.write_all(&data).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }
}

/// The median (upper middle for even counts).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// A `s3uring serve` of its own, whose stdout is kept for the counts it prints on SIGINT.
pub struct Server {
    child: std::process::Child,
    pub url: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(bin: &str, args: &[String]) -> Server {
        let mut child = Command::new(bin)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--bucket", "bench"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3uring serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let url = loop {
            let line = lines.next().expect("server exited").expect("server stdout");
            if let Some(u) = line.strip_prefix("endpoint: ") {
                break u.to_owned();
            }
        };
        let kept = Arc::new(Mutex::new(Vec::new()));
        let sink = kept.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Server { child, url, lines: kept }
    }

    /// Stops it (SIGINT, so it prints its counts) and returns what it printed.
    pub fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        std::thread::sleep(std::time::Duration::from_millis(100));
        self.lines.lock().expect("lines").clone()
    }
}

impl Drop for Server {
    /// A bench that panics must not leave its server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The machine, as every results file states it: cores, CPU model, kernel.
pub fn machine() -> String {
    format!(
        "{} cores ({}), kernel {}",
        sh("nproc"),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'"),
        sh("uname -r")
    )
}

/// A Markdown table, laid out the same way by every bench.
pub struct Table {
    text: String,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        let mut t = Table { text: String::new() };
        t.row(header);
        t.text.push_str(&"|---".repeat(header.len()));
        t.text.push_str("|\n");
        t
    }

    pub fn row<S: std::fmt::Display>(&mut self, cells: &[S]) {
        for c in cells {
            self.text.push_str(&format!("| {c} "));
        }
        self.text.push_str("|\n");
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}
