//! Errors of the API and their JSON form.
//!
//! Every error answer is `{"error": "<what went wrong>", "detail": "<why, and
//! what would work>"}` with the status code that fits; a bad query parameter
//! adds `"parameter": "<name>"`. `error` is a short fixed phrase a client can
//! match on; `detail` is for people.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Longest echo of a client's value in an error detail.
const ECHO_MAX: usize = 64;

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// `[api].tokens` is set and the request has no `Authorization: Bearer`.
    #[error("this API requires a token: send Authorization: Bearer <token>")]
    MissingToken,
    /// The bearer token is not one of `[api].tokens`.
    #[error("the bearer token is not accepted")]
    BadToken,
    /// No device with this id in the config.
    #[error("no device {id:?} in the config (known: {known})")]
    UnknownDevice {
        /// The id asked for.
        id: String,
        /// The configured ids, comma-separated.
        known: String,
    },
    /// A configured device that has not produced a reading the gateway kept.
    #[error(
        "device {0:?} has no reading yet (it has not answered since its records were last kept)"
    )]
    NoReadingYet(String),
    /// A query parameter that does not parse.
    #[error("{param}: expected {expected}, got {got:?}")]
    BadParameter {
        /// The parameter's name.
        param: String,
        /// What would have been accepted.
        expected: String,
        /// What arrived (cut to a few dozen characters).
        got: String,
    },
    /// A query parameter this route does not know.
    #[error("unknown parameter {param:?}: this route takes {known}")]
    UnknownParameter {
        /// The parameter's name.
        param: String,
        /// The parameters the route takes.
        known: &'static str,
    },
    /// The buffer is not open (the disk refused it at start); history cannot
    /// be read until the writer opens it.
    #[error(
        "the buffer is not open yet (the disk refused it at start); live data keeps flowing and history returns once the buffer opens"
    )]
    BufferNotOpen,
    /// Reading the buffer failed.
    #[error("reading the buffer failed: {0}")]
    Buffer(#[from] crate::buffer::BufferError),
    /// No alert episode with this id.
    #[error("no alert episode {0}; GET /v1/alerts lists them")]
    UnknownEpisode(String),
    /// No route with this path.
    #[error(
        "no route {0}; routes: /v1/status, /v1/devices/{{id}}/live, /v1/devices/{{id}}/history, /v1/devices/{{id}}/levels, /v1/alerts, /v1/alerts/{{episode}}/ack, /v1/stream, /metrics"
    )]
    UnknownRoute(String),
    /// The route exists but not for this method.
    #[error("{method} is not allowed on {path}; use GET (POST for an ack)")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path asked for.
        path: String,
    },
    /// A blocking task failed (panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A bad parameter, echoing at most [`ECHO_MAX`] characters of `got`.
    pub(crate) fn bad_parameter(param: &str, expected: impl Into<String>, got: &str) -> ApiError {
        let mut echo: String = got.chars().take(ECHO_MAX).collect();
        if echo.len() < got.len() {
            echo.push('…');
        }
        ApiError::BadParameter {
            param: param.to_owned(),
            expected: expected.into(),
            got: echo,
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingToken | ApiError::BadToken => StatusCode::UNAUTHORIZED,
            ApiError::UnknownDevice { .. }
            | ApiError::NoReadingYet(_)
            | ApiError::UnknownEpisode(_)
            | ApiError::UnknownRoute(_) => StatusCode::NOT_FOUND,
            ApiError::BadParameter { .. } | ApiError::UnknownParameter { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BufferNotOpen => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Buffer(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The short fixed phrase of the `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingToken => "missing token",
            ApiError::BadToken => "invalid token",
            ApiError::UnknownDevice { .. } => "unknown device",
            ApiError::NoReadingYet(_) => "no reading yet",
            ApiError::UnknownEpisode(_) => "unknown episode",
            ApiError::BadParameter { .. } => "bad parameter",
            ApiError::UnknownParameter { .. } => "unknown parameter",
            ApiError::BufferNotOpen => "buffer not open",
            ApiError::Buffer(_) => "buffer error",
            ApiError::UnknownRoute(_) => "not found",
            ApiError::MethodNotAllowed { .. } => "method not allowed",
            ApiError::Internal(_) => "internal error",
        }
    }
}

/// The JSON body of an error answer.
#[derive(Debug, Serialize)]
struct Body<'a> {
    error: &'static str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "API request failed");
        }
        let parameter = match &self {
            ApiError::BadParameter { param, .. } | ApiError::UnknownParameter { param, .. } => {
                Some(param.as_str())
            }
            _ => None,
        };
        let body = Body {
            error: self.code(),
            detail: self.to_string(),
            parameter,
        };
        let mut response = (status, Json(body)).into_response();
        let challenge = match self {
            ApiError::MissingToken => Some(r#"Bearer realm="slmd""#),
            ApiError::BadToken => Some(r#"Bearer realm="slmd", error="invalid_token""#),
            _ => None,
        };
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}
