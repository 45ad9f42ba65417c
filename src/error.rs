//! The error that ends a run as a whole (per-key failures are counted in the report instead).

/// A fatal error: the run could not start or could not go on. Per-key failures are not
/// fatal; they are counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// Bad configuration or an unusable source/destination, found before copying (exit 2).
    #[error("{0}")]
    Setup(String),
    /// Something broke inside the tool (exit 1).
    #[error("{0}")]
    Internal(String),
}
