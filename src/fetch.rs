//! Fetching one object: the chosen engine (`--fetch-engine lean|sdk`) and the retry policy
//! both share.
//!
//! Retry policy (`--retries N`): a transient failure (5xx, reset, timeout, short body) or a
//! throttling answer (SlowDown, 503, 429) is tried again after an exponential backoff with
//! full jitter — a random wait in `[0, min(cap, base · 2^attempt))` — so many tasks failing
//! together do not come back together. Permanent errors (NoSuchKey, AccessDenied, …) fail
//! the key at once. Every retry is counted in the summary, throttled ones separately.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, FetchEngine};
use crate::lean::{Conn, Lean};
use crate::report::Report;
use crate::s3::{self, Control, Fetched, GetError, Retry};

/// First backoff bound; doubles per attempt up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// The engine all fetch tasks share, and whether bodies are verified (`--verify`).
pub struct Engine {
    kind: Kind,
    verify: bool,
}

enum Kind {
    Lean(Box<Lean>),
    Sdk { client: aws_sdk_s3::Client, bucket: String },
}

impl Engine {
    /// The configured engine. `lean` falls back to `sdk`, with a warning, for endpoints it
    /// cannot sign for (S3 Express, multi-region access points).
    pub async fn new(cfg: &Config, control: &Control, report: &Arc<Report>) -> Result<Engine, String> {
        let bucket = &cfg.source.bucket;
        let verify = cfg.verify;
        let sdk = || Kind::Sdk { client: control.client_no_retry.clone(), bucket: bucket.clone() };
        let kind = match cfg.fetch_engine {
            FetchEngine::Sdk => sdk(),
            FetchEngine::Lean => match control.bucket_endpoint(bucket).await {
                Ok(ep) => Kind::Lean(Box::new(Lean::new(bucket, &ep, control.identities(), report.clone(), verify)?)),
                Err(why) => {
                    tracing::warn!("{why}: using --fetch-engine sdk");
                    sdk()
                }
            },
        };
        Ok(Engine { kind, verify })
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Lean(_) => "lean",
            Kind::Sdk { .. } => "sdk",
        }
    }

    /// GETs `key`, retrying as the policy says; the error is the last attempt's reason.
    pub async fn fetch(&self, conn: &mut Conn, key: &str, retries: u32, report: &Report) -> Result<Fetched, String> {
        let mut attempt = 0u32;
        loop {
            let got = match &self.kind {
                Kind::Lean(lean) => lean.get(conn, key).await,
                Kind::Sdk { client, bucket } => s3::get(client, bucket, key, self.verify).await,
            };
            let got = match got {
                Ok(f) if self.verify => verify(f, report),
                Err(e) if self.verify && e.reason.contains("checksum mismatch") => {
                    // The SDK validates a requested checksum itself, while reading the body.
                    report.corrupt();
                    Err(e)
                }
                other => other,
            };
            match got {
                Ok(f) => return Ok(f),
                Err(e) if e.retry == Retry::No || attempt >= retries => {
                    return Err(if attempt > 0 {
                        format!("{} (after {} attempts)", e.reason, attempt + 1)
                    } else {
                        e.reason
                    });
                }
                Err(e) => {
                    report.retried(e.retry == Retry::Throttled);
                    tracing::debug!(key, attempt, reason = %e.reason, "retrying GET");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// `--verify`: a body that does not match its checksum is a transient failure (retried;
/// never written).
fn verify(f: Fetched, report: &Report) -> Result<Fetched, GetError> {
    let integrity = f.integrity.clone().unwrap_or_default();
    match crate::verify::check(&f.body, &integrity) {
        Ok(how) => {
            report.verified(how);
            Ok(f)
        }
        Err(reason) => {
            report.corrupt();
            Err(GetError::transient(reason))
        }
    }
}

/// Full-jitter exponential backoff before retry number `attempt + 1`.
fn backoff(attempt: u32) -> Duration {
    let bound = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
    bound.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..40 {
            let bound = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
            for _ in 0..50 {
                assert!(backoff(attempt) <= bound);
            }
        }
        assert_eq!(BACKOFF_BASE.saturating_mul(1u32 << 16).min(BACKOFF_CAP), BACKOFF_CAP);
    }
}
