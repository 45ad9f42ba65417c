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
use crate::s3::{self, Control, Fetched, Retry};

/// First backoff bound; doubles per attempt up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// The engine all fetch tasks share.
pub enum Engine {
    Lean(Box<Lean>),
    Sdk { client: aws_sdk_s3::Client, bucket: String },
}

impl Engine {
    /// The configured engine. `lean` falls back to `sdk`, with a warning, for endpoints it
    /// cannot sign for (S3 Express, multi-region access points).
    pub async fn new(cfg: &Config, control: &Control, report: &Arc<Report>) -> Result<Engine, String> {
        let bucket = &cfg.source.bucket;
        let sdk = || Engine::Sdk { client: control.client_no_retry.clone(), bucket: bucket.clone() };
        match cfg.fetch_engine {
            FetchEngine::Sdk => Ok(sdk()),
            FetchEngine::Lean => match control.bucket_endpoint(bucket).await {
                Ok(ep) => Ok(Engine::Lean(Box::new(Lean::new(bucket, &ep, control.identities(), report.clone())?))),
                Err(why) => {
                    tracing::warn!("{why}: using --fetch-engine sdk");
                    Ok(sdk())
                }
            },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Engine::Lean(_) => "lean",
            Engine::Sdk { .. } => "sdk",
        }
    }

    /// GETs `key`, retrying as the policy says; the error is the last attempt's reason.
    pub async fn fetch(&self, conn: &mut Conn, key: &str, retries: u32, report: &Report) -> Result<Fetched, String> {
        let mut attempt = 0u32;
        loop {
            let got = match self {
                Engine::Lean(lean) => lean.get(conn, key).await,
                Engine::Sdk { client, bucket } => s3::get(client, bucket, key).await,
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
