//! The contract's envelope `{code, msg, data}` and the one place errors become responses.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gpu_replica_core::Error;
use serde::Serialize;
use utoipa::ToSchema;

/// `{code, msg, data}`: code 200 and msg "Success" on success, the contract code otherwise.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    /// 200 on success, else the contract's error code.
    pub code: u16,
    /// "Success", or what went wrong in words.
    pub msg: String,
    /// The payload; null on errors.
    pub data: Option<T>,
}

impl<T: Serialize> IntoResponse for Envelope<T> {
    fn into_response(self) -> Response {
        Json(self).into_response()
    }
}

/// A successful answer.
pub fn ok<T: Serialize>(data: T) -> Envelope<T> {
    Envelope {
        code: 200,
        msg: "Success".into(),
        data: Some(data),
    }
}

/// A core error on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError(e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        ApiError(Error::InvalidParams(rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError(Error::InvalidParams(rejection.body_text()))
    }
}

/// The HTTP status that fits an error: 4xx for what the client can fix, 503 when a dependency
/// (Docker, the store, NVML) is down or failing, 500 for a failed operation.
pub fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::NotFound(_) | Error::VolumeNotFound(_) => StatusCode::NOT_FOUND,
        Error::AlreadyExists(_)
        | Error::VolumeExists(_)
        | Error::NoNeedPatch(_)
        | Error::NoNeedRollback(_)
        | Error::VolumeSameSize(..)
        | Error::NotEnoughGpus { .. }
        | Error::NotEnoughPorts { .. }
        | Error::ShrinkBelowUsage { .. }
        | Error::Refused { .. } => StatusCode::CONFLICT,
        Error::InvalidParams(_)
        | Error::ImageNameEmpty
        | Error::NameEmpty
        | Error::NameHasDash(_)
        | Error::NegativeGpuCount(_)
        | Error::NegativeVersion(_)
        | Error::VolumeNameEmpty
        | Error::SizeUnit(_)
        | Error::VolumeNameHasDash(_)
        | Error::VolumeNameSlash(_)
        | Error::ImageNotFound(_)
        | Error::BindRefused(_) => StatusCode::BAD_REQUEST,
        Error::Gpu(_) | Error::Docker(_) | Error::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        if status.is_server_error() {
            tracing::warn!(code = self.0.code(), "{}", self.0);
        }
        let body = Envelope::<()> {
            code: self.0.code(),
            msg: self.0.to_string(),
            data: None,
        };
        (status, Json(body)).into_response()
    }
}
