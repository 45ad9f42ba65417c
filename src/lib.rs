//! s3uring: restore very many small objects from S3 onto a local Linux file system, fast.
//!
//! ```text
//! lister ─▶ [bounded key queue] ─▶ fetch tasks (lean: hyper + aws-sigv4; or aws-sdk-s3) ─▶ [bounded hand-off] ─▶ writer
//! ```
//!
//! See `ARCHITECTURE.md` (stages, invariants, the reasons behind the big choices) and the
//! README; each module opens with its own design note. `main.rs` only calls [`cli::main`];
//! tests and benches drive [`run::run`] and the [`endpoint`] in-process.
#![deny(clippy::undocumented_unsafe_blocks)]
#![forbid(unsafe_op_in_unsafe_fn)]

/// `eprintln!` that never panics: a copy must not die because its stderr was closed
/// (`s3uring … 2>&1 | head`); what cannot be written is dropped.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics (see [`say!`]).
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

pub mod audit;
pub mod cli;
pub mod config;
pub mod console;
pub mod endpoint;
pub mod error;
pub mod existing;
pub mod fetch;
pub mod keymap;
pub mod queue;
pub mod report;
pub mod run;
pub mod s3;
pub mod select;
pub mod source;
pub mod stop;
pub mod verify;
pub mod writer;
