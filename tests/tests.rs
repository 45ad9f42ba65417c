//! The integration suite: one binary (ripgrep's layout), one module per theme. Every test
//! runs the real `s3uring` binary against the embedded s3s endpoint on 127.0.0.1 through
//! the real aws-sdk-s3 client, and checks real files.

mod audit;
mod checksums;
mod copy;
mod durable;
mod endpoint;
mod errors;
mod fetch;
mod field;
mod install;
mod keys;
mod killed;
mod large;
mod layout;
mod listing;
mod logs;
mod lying;
mod manifest;
mod moto;
mod proxy;
mod s3rver;
mod select;
mod throttle;
mod tls;
mod util;
