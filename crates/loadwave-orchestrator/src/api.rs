//! The REST API, built by [`app`] so the same router runs under `axum::serve` and inside
//! Lambda (`lambda_http`).
//!
//! The handlers talk to a [`Backend`]: the local orchestrator (its controller's state in
//! memory, [`crate::Orchestrator`]) or the store-backed one of the Lambda API function
//! ([`crate::StoreBackend`]), which has no controller loop. Both answer the same routes
//! with the same JSON and errors, so the contract does not fork.
//!
//! Bad input answers 4xx with `{"error": {"status", "field", "message"}}` naming the
//! field; unknown tests answer 404. Internal failures answer an opaque 500 and are logged.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use loadwave_core::TestView;
use loadwave_proto::TestSpec;
use loadwave_proto::spec::MAX_BODY_BYTES;
use serde::Serialize;
use utoipa::OpenApi;

use async_trait::async_trait;
use loadwave_bus::BusState;
use loadwave_core::{BusStats, DriverInfo, StopError, TestListItem};
use loadwave_proto::forbidden_address;

use crate::report;

/// The largest request body: a spec with the largest allowed request body, plus room.
pub const MAX_REQUEST_BYTES: usize = MAX_BODY_BYTES + 64 * 1024;

/// An error answered to the client.
#[derive(Debug)]
pub enum AppError {
    /// Bad input: 400 (not JSON), 413 (too large) or 422 (invalid field).
    Invalid {
        /// The status.
        status: StatusCode,
        /// The field at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such resource.
    NotFound(String),
    /// The request conflicts with the resource's state.
    Conflict(String),
    /// Not ready: a dependency (`field`, such as `bus`) is unavailable. 503.
    Unavailable {
        /// What is missing.
        field: String,
        /// Since when and why.
        message: String,
    },
    /// Our fault; the detail is logged, not shown.
    Internal(String),
}

/// The error document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// The HTTP status.
    pub status: u16,
    /// The offending field, for bad input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A sentence for people.
    pub message: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, field, message) = match self {
            AppError::Invalid {
                status,
                field,
                message,
            } => (status, Some(field), message),
            AppError::NotFound(m) => (StatusCode::NOT_FOUND, None, m),
            AppError::Conflict(m) => (StatusCode::CONFLICT, None, m),
            AppError::Unavailable { field, message } => {
                (StatusCode::SERVICE_UNAVAILABLE, Some(field), message)
            }
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    None,
                    "internal error; see the orchestrator's log".to_string(),
                )
            }
        };
        let body = ErrorBody {
            error: ErrorDetail {
                status: status.as_u16(),
                field,
                message,
            },
        };
        (status, Json(body)).into_response()
    }
}

/// A test spec from a JSON body, with the API's own error format.
pub struct SpecJson(pub TestSpec);

impl<S: Send + Sync> FromRequest<S> for SpecJson {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let bytes =
            Bytes::from_request(req, state)
                .await
                .map_err(|rejection: BytesRejection| {
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        AppError::Invalid {
                            status: StatusCode::PAYLOAD_TOO_LARGE,
                            field: "body".into(),
                            message: format!("the request body exceeds {MAX_REQUEST_BYTES} bytes"),
                        }
                    } else {
                        AppError::Invalid {
                            status: StatusCode::BAD_REQUEST,
                            field: "body".into(),
                            message: rejection.body_text(),
                        }
                    }
                })?;
        TestSpec::from_json(&bytes).map(SpecJson).map_err(|err| {
            let status = if err.field == "body" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            AppError::Invalid {
                status,
                field: err.field,
                message: err.message,
            }
        })
    }
}

impl From<StopError> for AppError {
    fn from(e: StopError) -> Self {
        match e {
            StopError::NotFound(_) => AppError::NotFound(e.to_string()),
            StopError::Finished { .. } => AppError::Conflict(e.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        AppError::Internal(e.to_string())
    }
}

/// What the API needs from an orchestrator.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The caps a new test must stay within.
    fn limits(&self) -> loadwave_core::Limits;
    /// Creates a test from a validated spec; it is stored before this answers.
    async fn create(&self, spec: TestSpec) -> Result<TestView, AppError>;
    /// A test's state, if it exists.
    async fn view(&self, id: &str) -> Result<Option<TestView>, AppError>;
    /// Every test, newest first.
    async fn list(&self) -> Result<Vec<TestListItem>, AppError>;
    /// Asks a test's drivers to stop.
    async fn stop(&self, id: &str) -> Result<TestView, AppError>;
    /// Known drivers.
    async fn drivers(&self) -> Result<Vec<DriverInfo>, AppError>;
    /// Liveness, with counts.
    async fn health(&self) -> Result<Health, AppError>;
    /// Whether its bus can be reached.
    fn bus_state(&self) -> BusState;
}

/// The body type of the router's responses.
pub type ResponseBody = axum::body::Body;

/// Shared state of the handlers.
pub type AppState = Arc<dyn Backend>;

/// Refuses a target that resolves to a link-local (metadata service) address: every
/// address each request's host resolves to is checked, not just the URL's text. A name
/// that does not resolve here is let through (the drivers may see other DNS); they check
/// again.
pub async fn check_target(spec: &TestSpec) -> Result<(), AppError> {
    for req in spec.request_list() {
        let field = if req.field == "target_url" {
            req.field.clone()
        } else {
            format!("{}.url", req.field)
        };
        let url = loadwave_proto::parse_target_url(&req.url).map_err(|e| AppError::Invalid {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            field: field.clone(),
            message: e.message,
        })?;
        if let Ok(addrs) = tokio::net::lookup_host((url.host.as_str(), url.port)).await {
            for addr in addrs {
                if let Some(why) = forbidden_address(addr.ip()) {
                    return Err(AppError::Invalid {
                        status: StatusCode::UNPROCESSABLE_ENTITY,
                        field,
                        message: format!(
                            "`{}` resolves to {}, {why}; loadwave does not send load there",
                            url.host,
                            addr.ip()
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// The router.
pub fn app(backend: AppState) -> Router {
    Router::new()
        .route("/tests", get(list_tests).post(create_test))
        .route("/tests/{id}", get(get_test))
        .route("/tests/{id}/stop", post(stop_test))
        .route("/tests/{id}/report", get(test_report))
        .route("/drivers", get(list_drivers))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(backend)
}

/// Start a test.
#[utoipa::path(post, path = "/tests", request_body = TestSpec,
    responses(
        (status = 201, description = "Created; the test's initial state", body = TestView),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid", body = ErrorBody),
    ))]
async fn create_test(
    State(orch): State<AppState>,
    SpecJson(spec): SpecJson,
) -> Result<(StatusCode, Json<TestView>), AppError> {
    orch.limits()
        .check(&spec)
        .map_err(|over| AppError::Invalid {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            field: over.field.to_string(),
            message: over.message,
        })?;
    check_target(&spec).await?;
    let view = orch.create(spec).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Every test, newest first.
#[utoipa::path(get, path = "/tests", responses((status = 200, body = Vec<TestListItem>)))]
async fn list_tests(State(orch): State<AppState>) -> Result<Json<Vec<TestListItem>>, AppError> {
    Ok(Json(orch.list().await?))
}

fn unknown(id: &str) -> AppError {
    AppError::NotFound(format!("no test with id `{id}`"))
}

/// A test's state: status, drivers, summary, timeline, verdict.
#[utoipa::path(get, path = "/tests/{id}",
    params(("id" = String, Path, description = "Test id")),
    responses((status = 200, body = TestView), (status = 404, body = ErrorBody)))]
async fn get_test(
    State(orch): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TestView>, AppError> {
    orch.view(&id).await?.map(Json).ok_or_else(|| unknown(&id))
}

/// Stop a test: drivers stop sending, finish what is in flight and report.
#[utoipa::path(post, path = "/tests/{id}/stop",
    params(("id" = String, Path, description = "Test id")),
    responses((status = 202, body = TestView), (status = 404, body = ErrorBody),
        (status = 409, description = "Already ended", body = ErrorBody)))]
async fn stop_test(
    State(orch): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TestView>), AppError> {
    let view = orch.stop(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// The test as an HTML report.
#[utoipa::path(get, path = "/tests/{id}/report",
    params(("id" = String, Path, description = "Test id")),
    responses((status = 200, content_type = "text/html", body = String), (status = 404, body = ErrorBody)))]
async fn test_report(
    State(orch): State<AppState>,
    Path(id): Path<String>,
) -> Result<Html<String>, AppError> {
    let view = orch.view(&id).await?.ok_or_else(|| unknown(&id))?;
    Ok(Html(report::render(&view)))
}

/// Known drivers.
#[utoipa::path(get, path = "/drivers", responses((status = 200, body = Vec<DriverInfo>)))]
async fn list_drivers(State(orch): State<AppState>) -> Result<Json<Vec<DriverInfo>>, AppError> {
    Ok(Json(orch.drivers().await?))
}

/// Liveness, with counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` when answering: the process serves (see `/readyz` for readiness).
    pub status: &'static str,
    /// How drivers are found.
    pub launcher: &'static str,
    /// Tests by status.
    pub tests: std::collections::BTreeMap<String, u64>,
    /// Drivers heard from in the last 3 s.
    pub live_drivers: usize,
    /// The bus: whether it can be reached, and the messages skipped.
    pub bus: BusHealthView,
}

/// The bus as health checks show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BusHealthView {
    /// Whether the broker answers.
    pub reachable: bool,
    /// Since when it has been so, ms since the epoch.
    pub since_ms: u64,
    /// Messages skipped.
    #[serde(flatten)]
    pub skipped: BusStats,
}

impl BusHealthView {
    /// `state` with the counts of skipped messages.
    pub fn new(state: BusState, skipped: BusStats) -> Self {
        BusHealthView {
            reachable: state.reachable,
            since_ms: state.since_ms,
            skipped,
        }
    }
}

/// Liveness: 200 while the process serves, whatever the bus's state (which it reports).
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz(State(orch): State<AppState>) -> Result<Json<Health>, AppError> {
    Ok(Json(orch.health().await?))
}

/// How long the bus may be unreachable before `/readyz` says so: a probe or two, so a
/// blip does not flap a load balancer or a compose dependency.
pub const READY_GRACE_MS: u64 = 3_000;

/// Readiness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// `ready`.
    pub status: &'static str,
    /// The bus's state.
    pub bus: BusState,
}

/// Readiness: 200 when tests can be run; 503 naming the bus once it has been
/// unreachable for more than a few seconds.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, body = Ready),
    (status = 503, description = "The bus is unreachable", body = ErrorBody)))]
async fn readyz(State(orch): State<AppState>) -> Result<Json<Ready>, AppError> {
    let bus = orch.bus_state();
    let down_ms = bus.for_ms(loadwave_proto::unix_ms_now());
    if !bus.reachable && down_ms >= READY_GRACE_MS {
        return Err(AppError::Unavailable {
            field: "bus".into(),
            message: format!(
                "the message bus (Kafka) has been unreachable for {} s; tests cannot start or be followed until it returns",
                down_ms / 1_000
            ),
        });
    }
    Ok(Json(Ready {
        status: "ready",
        bus,
    }))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "loadwave orchestrator",
        description = "Distributed HTTP load testing: start tests, watch them live, read their results."
    ),
    paths(
        create_test,
        list_tests,
        get_test,
        stop_test,
        test_report,
        list_drivers,
        healthz,
        readyz
    ),
    components(schemas(
        TestSpec,
        loadwave_proto::RequestSpec,
        loadwave_proto::Stage,
        TestView,
        ErrorBody,
        TestListItem,
        DriverInfo,
        Health
    ))
)]
struct ApiDoc;

/// The OpenAPI document of this API, generated from the code.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_document().to_json().unwrap_or_default(),
    )
}

async fn not_found() -> AppError {
    AppError::NotFound("no such route; see /openapi.json".into())
}

async fn method_not_allowed() -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            status: 405,
            field: None,
            message: "method not allowed on this route; see /openapi.json".into(),
        },
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
