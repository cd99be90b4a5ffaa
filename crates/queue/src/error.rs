/// Errors of the queue engine's own operations (not of handlers: see [`crate::HandlerError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("message payload could not be encoded as JSON: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("delivery to subscriber {subscriber:?} failed: {source}")]
    Delivery { subscriber: String, source: sqlx::Error },
    #[error("invalid queue configuration: {0}")]
    Config(String),
}
