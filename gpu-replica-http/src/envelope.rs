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
        // One buffer sized for a typical answer, rather than Json's small growing one.
        let mut body = Vec::with_capacity(1024);
        match serde_json::to_writer(&mut body, &self) {
            Ok(()) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(_) => Json(self).into_response(),
        }
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
pub struct ApiError(pub Error, pub Option<StatusCode>);

impl ApiError {
    /// Answers with `status` instead of the one the error implies.
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.1 = Some(status);
        self
    }
}

impl ApiError {
    /// Wraps a core error.
    pub fn new(e: Error) -> ApiError {
        ApiError(e, None)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError::new(e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        ApiError::new(Error::InvalidParams(rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::new(Error::InvalidParams(rejection.body_text()))
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
        | Error::BindRefused(_)
        | Error::OverShare(_) => StatusCode::BAD_REQUEST,
        Error::Gpu(_) | Error::Docker(_) | Error::Store(_) | Error::Unavailable(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Error::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.1.unwrap_or_else(|| status_of(&self.0));
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

/// A JSON object body decoded into `T`; anything else (bad JSON, an array, a wrong type, a
/// body over the limit) is code 1000 in the envelope, never a plain-text error.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<serde_json::Value>::from_request(request, state)
            .await
            .map_err(|rejection| match rejection {
                JsonRejection::BytesRejection(_) => ApiError::new(Error::InvalidParams(format!(
                    "request body larger than {} bytes",
                    crate::BODY_LIMIT
                )))
                .with_status(StatusCode::PAYLOAD_TOO_LARGE),
                other => ApiError::from(other),
            })?;
        if !value.is_object() {
            return Err(ApiError::new(Error::InvalidParams(
                "the request body must be a JSON object".into(),
            )));
        }
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| ApiError::new(Error::InvalidParams(e.to_string())))
    }
}
