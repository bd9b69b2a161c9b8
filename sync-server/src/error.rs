//! The server's error type, and the one place where errors become HTTP responses.

use std::time::Duration;

use axum::Json;
use axum::http::header::{CONNECTION, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sync_runtime::protocol::ErrorBody;
use sync_runtime::server::Unserved;

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the server: at start (configuration, files,
/// binding) and while serving a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A file or directory could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The request carries no valid credentials (401). The message says why,
    /// never what the credentials were.
    #[error("{0}")]
    Unauthorized(String),

    /// The credentials are valid but do not allow this request (403).
    #[error("{0}")]
    Forbidden(String),

    /// No database has this name on this server (404).
    #[error(
        "database `{0}` does not exist on this server; an admin creates it by putting its schema"
    )]
    DatabaseNotFound(String),

    /// The database exists but cannot be served: its storage is damaged (503,
    /// code `database_unavailable`). It lasts until an operator restores it from a
    /// backup and restarts the server; the server's log has the file's path.
    #[error(
        "database `{name}` cannot be served: its file is damaged ({reason}); an operator must \
         restore it from a backup and restart the server"
    )]
    DatabaseUnavailable {
        /// The database.
        name: String,
        /// What is wrong with its file.
        reason: String,
    },

    /// No endpoint has this path (404).
    #[error("no endpoint at {0}")]
    RouteNotFound(String),

    /// The request is malformed: a bad database name, header, cursor or body (400).
    #[error("{0}")]
    BadRequest(String),

    /// The device's app version is not served (409): a table of it is as no
    /// published version has it, or as only versions older than the oldest
    /// supported have it (see [`Versions::resolve`](sync_runtime::server::Versions::resolve)).
    /// The device keeps its changes.
    #[error("database `{database}`: {reason}")]
    Unserved {
        /// The database.
        database: String,
        /// Why.
        reason: Unserved,
    },

    /// The request body is larger than `max_body_bytes` (413).
    #[error("the request body is larger than the limit of {limit} bytes; send smaller batches")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },

    /// Too many pulls wait for changes already, on the server or for this user
    /// (429): the pull is answered at once instead of waiting, and the device
    /// should pull again after `retry_after` (sent as `Retry-After`). See
    /// [`waiting`](crate::waiting).
    #[error("{reason}; pull again in {} s", retry_after.as_secs())]
    TooManyWaitingPulls {
        /// Which cap is reached.
        reason: String,
        /// How long the device should wait before it pulls again.
        retry_after: Duration,
    },

    /// An error of the sync engine: bad input (400, 409) or a storage failure
    /// (500), see [`Error::status`].
    #[error(transparent)]
    Runtime(#[from] sync_runtime::Error),
}

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        use sync_runtime::Error as R;
        match self {
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::DatabaseNotFound(_) | Error::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unserved { .. } => StatusCode::CONFLICT,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::TooManyWaitingPulls { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::DatabaseUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Runtime(e) => match e {
                R::SchemaMismatch { .. } | R::IncompatibleChange { .. } | R::SiteReused { .. } => {
                    StatusCode::CONFLICT
                }
                R::Payload(sync_runtime::wire::WireError::TooLarge { .. }) => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                // What a client sent is wrong: a damaged payload, a table or
                // column the database does not have, a value of the wrong type
                // or NaN, an invalid schema.
                R::InvalidSchema(_)
                | R::Payload(_)
                | R::UnknownTable { .. }
                | R::UnknownColumn { .. }
                | R::WrongType { .. }
                | R::Decode { .. }
                | R::Constraint { .. }
                | R::GrowOnly { .. }
                | R::Refused { .. }
                | R::NotANumber { .. }
                | R::InvalidKey { .. }
                | R::NotRegistered { .. } => StatusCode::BAD_REQUEST,
                // PostgreSQL ended the request's transaction for a conflict
                // with others (again at each retry): it may be made again.
                e if e.may_retry() => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Error::Config(_) | Error::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code of this error's [`ErrorBody`]: the
    /// [`code`](Self::code) of its status, but for a database that cannot be
    /// served.
    pub fn body_code(&self) -> &'static str {
        match self {
            Error::DatabaseUnavailable { .. } => ErrorBody::DATABASE_UNAVAILABLE,
            Error::Runtime(sync_runtime::Error::SiteReused { .. }) => ErrorBody::SITE_REUSED,
            Error::Unserved { reason, .. } => match reason {
                Unserved::NotPublished { .. } => ErrorBody::SCHEMA_NOT_PUBLISHED,
                Unserved::TooOld { .. } => ErrorBody::SCHEMA_TOO_OLD,
                // What a device of release 0.1.0 reads as its schema differing.
                _ => Error::code(StatusCode::CONFLICT),
            },
            other => Error::code(other.status()),
        }
    }

    /// The machine-readable code of [`ErrorBody`] for a status.
    pub fn code(status: StatusCode) -> &'static str {
        match status {
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "schema_mismatch",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_client_error() => "bad_request",
            _ => "server_error",
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.body_code();
        let message = match &self {
            // Logged with the file's path when the file was refused; the message
            // names no path.
            Error::DatabaseUnavailable { .. } => self.to_string(),
            _ if status.is_server_error() => {
                // The details stay in the server's log.
                tracing::error!(error = %self, "request failed");
                "the server failed to handle the request; it is logged, retry later".to_owned()
            }
            _ => self.to_string(),
        };
        let mut response = error_response(status, code, message);
        if let Error::TooManyWaitingPulls { retry_after, .. } = self {
            let headers = response.headers_mut();
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            // The device comes back later, on a new connection: kept open, this
            // one would hold one of the file descriptors the cap protects.
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// An error response with an [`ErrorBody`].
pub(crate) fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody {
        code: code.to_owned(),
        message,
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transaction PostgreSQL ended for a conflict (a deadlock, a
    /// serialization failure) is answered 503, to be made again; any other
    /// PostgreSQL error is the server's.
    #[test]
    fn a_conflict_in_postgresql_is_a_request_to_try_again() {
        let postgres = |code: Option<&str>| {
            Error::Runtime(sync_runtime::Error::Postgres {
                code: code.map(str::to_owned),
                message: "m".into(),
            })
        };
        for code in ["40001", "40P01"] {
            assert_eq!(
                postgres(Some(code)).status(),
                StatusCode::SERVICE_UNAVAILABLE
            );
        }
        for code in [None, Some("23505")] {
            assert_eq!(postgres(code).status(), StatusCode::INTERNAL_SERVER_ERROR);
        }
    }
}
