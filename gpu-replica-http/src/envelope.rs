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

/// The error a request body gives when its deadline passed (the server's connection loop
/// puts it there); the body extractor answers 408.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

/// What every error answer looks like: the contract's code, the message, `data` null.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorReply {
    /// The contract's error code (the list is in the document's description).
    pub code: u16,
    /// What went wrong, in words a user can act on.
    pub msg: String,
    /// Always null.
    #[schema(value_type = Option<Object>, nullable)]
    pub data: Option<serde_json::Value>,
}

/// What a success without data looks like (stop, pause, continue, delete, …): code 200, msg
/// "Success", `data` null. Only for the document: such handlers answer `Envelope<()>`, which
/// serializes the same.
#[derive(Debug, Serialize, ToSchema)]
pub struct NoData {
    /// Always 200.
    pub code: u16,
    /// Always "Success".
    pub msg: String,
    /// Always null.
    #[schema(schema_with = null_schema)]
    pub data: (),
}

fn null_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Null)
        .description(Some("Always null."))
        .build()
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
        // Missing things, the user's image included: the request itself may be fine.
        Error::NotFound(_)
        | Error::VolumeNotFound(_)
        | Error::ImageNotFound(_)
        | Error::UserNotFound(_)
        | Error::KeyNotFound(_)
        | Error::NodeNotFound(_) => StatusCode::NOT_FOUND,
        // The operator's policy forbids it, however well formed.
        Error::BindRefused(_) | Error::QuotaExceeded(_) | Error::AdminOnly(_) => {
            StatusCode::FORBIDDEN
        }
        Error::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
        Error::Unauthorized => StatusCode::UNAUTHORIZED,
        Error::AlreadyExists(_)
        | Error::VolumeExists(_)
        | Error::NoNeedPatch(_)
        | Error::NoNeedRollback(_)
        | Error::VolumeSameSize(..)
        | Error::NotEnoughGpus { .. }
        | Error::NotEnoughPorts { .. }
        | Error::ShrinkBelowUsage { .. }
        | Error::Refused { .. }
        | Error::Conflict(_)
        | Error::NotRunning(_)
        | Error::UserExists(_)
        | Error::UserOwnsObjects(_)
        | Error::VolumesNotMoved(_)
        | Error::NetworkPoolFull(_)
        | Error::OverDisk(_)
        | Error::KeyTaken(_)
        | Error::NodeCordoned(_)
        // Well formed, but the clock has moved past it.
        | Error::StopTimePast(_) => StatusCode::CONFLICT,
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
        | Error::OverShare(_) => StatusCode::BAD_REQUEST,
        Error::Gpu(_)
        | Error::Docker(_)
        | Error::Store(_)
        | Error::Unavailable(_)
        | Error::NodeLost(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        Error::StoreFull(_) | Error::DockerDiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
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
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a late body may still come: the connection cannot be reused.
            return (
                status,
                [(axum::http::header::CONNECTION, "close")],
                Json(body),
            )
                .into_response();
        }
        (status, Json(body)).into_response()
    }
}

/// Whether a body rejection comes from the body's deadline (see [`crate::serve`]).
fn timed_out(rejection: &axum::extract::rejection::BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = source {
        if error.is::<BodyTimedOut>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The answer to a request whose handler panicked: our fault, said as such (500, code 500).
pub fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    let body = Envelope::<()> {
        code: 500,
        msg: "internal error: the server hit a bug handling this request; nothing was changed \
              by it that recovery does not settle"
            .into(),
        data: None,
    };
    (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
}

/// A JSON object body decoded into `T`; anything else (bad JSON, an array, a wrong type, a
/// body over the limit) is code 1000 in the envelope, never a plain-text error.
///
/// The body is read as JSON when the Content-Type is missing, JSON (`application/json`, or any
/// `+json` type), or `application/x-www-form-urlencoded`: that is what `curl -d` sends unless
/// told otherwise, and a person typing curl means JSON. Any other type is refused.
#[derive(Debug)]
pub struct Body<T>(pub T);

/// `2.0` read as `2`: JSON has one number type, and a client (or a JSON Schema tool) may
/// write a whole number with a fraction part.
fn whole_numbers(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(whole_numbers).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, whole_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Whether a request with this Content-Type may carry a JSON body.
fn json_content_type(content_type: Option<&axum::http::HeaderValue>) -> bool {
    let Some(value) = content_type else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence == "application/x-www-form-urlencoded"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .cloned();
        if !json_content_type(content_type.as_ref()) {
            return Err(ApiError::new(Error::InvalidParams(format!(
                "the request body must be JSON (Content-Type: application/json), not {}",
                content_type
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("binary")
            ))));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if timed_out(&rejection) {
                    return ApiError::new(Error::InvalidParams(
                        "the request body did not arrive within the body timeout".into(),
                    ))
                    .with_status(StatusCode::REQUEST_TIMEOUT);
                }
                ApiError::new(Error::InvalidParams(format!(
                    "request body larger than {} bytes",
                    crate::BODY_LIMIT
                )))
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            })?;
        // No body at all reads as `{}`: a missing field then says which one it is.
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            axum::body::Bytes::from_static(b"{}")
        } else {
            bytes
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(Error::InvalidParams(format!(
                "the request body is not valid JSON: {e}"
            )))
        })?;
        // `null` is no body, as an empty one is.
        let value = if value.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            value
        };
        if !value.is_object() {
            return Err(ApiError::new(Error::InvalidParams(
                "the request body must be a JSON object".into(),
            )));
        }
        let value = whole_numbers(value);
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| ApiError::new(Error::InvalidParams(e.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::{json_content_type, status_of};
    use axum::http::{HeaderValue, StatusCode};
    use gpu_replica_core::{Error, Operation};

    #[test]
    fn races_and_stopped_containers_are_conflicts_and_only_our_faults_are_5xx() {
        let conflict = Error::Conflict("head changed".into());
        assert_eq!(
            (status_of(&conflict), conflict.code()),
            (StatusCode::CONFLICT, 1046)
        );
        let stopped = Error::NotRunning("container x is not running".into());
        assert_eq!(
            (status_of(&stopped), stopped.code()),
            (StatusCode::CONFLICT, 1047)
        );
        let refused = Error::refused(Operation::Exec, "not running");
        assert_eq!(status_of(&refused), StatusCode::CONFLICT);
        let names = Error::InvalidParams("name '..' must begin with a letter".into());
        assert_eq!(status_of(&names), StatusCode::BAD_REQUEST);
        let down = Error::Unavailable("the Docker engine".into());
        assert_eq!(status_of(&down), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn whole_numbers_with_a_fraction_part_are_integers() {
        let read = super::whole_numbers(serde_json::json!({"gpuCount": 2.0, "x": [1.5, 3.0]}));
        assert_eq!(read, serde_json::json!({"gpuCount": 2, "x": [1.5, 3]}));
    }

    #[test]
    fn curl_defaults_and_json_types_are_read_as_json() {
        let accepts = |v: &str| json_content_type(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(json_content_type(None));
        assert!(accepts("application/json"));
        assert!(accepts("application/json; charset=utf-8"));
        assert!(accepts("Application/JSON"));
        assert!(accepts("application/x-www-form-urlencoded"));
        assert!(accepts("application/merge-patch+json"));
        assert!(!accepts("text/plain"));
        assert!(!accepts("multipart/form-data; boundary=x"));
        assert!(!accepts("application/xml"));
    }
}
