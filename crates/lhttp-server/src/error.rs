//! [`ServerError`]: why a server could not be built or run.

/// Why a server could not be built or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A processor was registered for a name that cannot be a command, or for one the server
    /// answers itself (`auth`, `ping`, `history`).
    #[error("invalid command name {0:?}")]
    InvalidCommand(String),
    /// Two processors were registered for the same command.
    #[error("a processor is already registered for command {0:?}")]
    DuplicateProcessor(String),
    /// The listener failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
