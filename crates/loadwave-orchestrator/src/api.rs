//! The REST API, built by [`app`] so the same router runs under `axum::serve` and inside
//! Lambda (`lambda_http`).
//!
//! The handlers talk to a [`Backend`]: the local orchestrator (its controller's state in
//! memory, [`crate::Orchestrator`]) or the store-backed one of the Lambda API function
//! ([`crate::StoreBackend`]), which has no controller loop. Both answer the same routes
//! with the same JSON and errors, so the contract does not fork.
//!
//! [`app`] has no authentication of its own: the Lambda function serves it behind API
//! Gateway's IAM authorization. The local orchestrator serves [`secured_app`], which puts
//! [`crate::access`] (token, `Host`, content type) in front of it.
//!
//! Bad input answers 4xx with `{"error": {"status", "field", "message"}}` naming the
//! field; unknown tests answer 404. Internal failures answer an opaque 500 and are logged.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use loadwave_core::TestView;
use loadwave_proto::TestSpec;
use loadwave_proto::spec::MAX_BODY_BYTES;
use loadwave_proto::{Message, TestConfig};
use serde::Serialize;
use utoipa::OpenApi;

use async_trait::async_trait;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use loadwave_bus::BusState;
use loadwave_core::{BusStats, DriverInfo, LIST_MAX_LIMIT, ListQuery, StopError, TestListItem};
use loadwave_proto::forbidden_address;

use crate::report;

/// The largest request body: a spec with the largest allowed request body, plus room.
pub const MAX_REQUEST_BYTES: usize = MAX_BODY_BYTES + 64 * 1024;

/// The largest encoded test configuration a spec may make: under the 1 MB default message
/// limit of Kafka brokers and librdkafka, with room for the envelope and the headers.
pub const MAX_CONFIG_BYTES: usize = loadwave_proto::spec::MAX_SPEC_BYTES;

/// The driver id assumed when sizing a test's configuration: longer than any id a driver
/// gets to register with.
const SIZING_DRIVER_ID_LEN: usize = 256;

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
        // Not JSON at all is the document's fault (400, field `body` for the request
        // body); anything wrong in a JSON document is a field's, the spec's own `body`
        // included (422).
        if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return Err(AppError::Invalid {
                status: StatusCode::BAD_REQUEST,
                field: "body".into(),
                message: format!("the request body is not JSON: {err}"),
            });
        }
        TestSpec::from_json(&bytes)
            .map(SpecJson)
            .map_err(|err| AppError::Invalid {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                field: err.field,
                message: err.message,
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
    /// Endpoints no test may aim at: the orchestrator's own listener and its Kafka
    /// brokers, unless `--allow-self-target` (none by default).
    fn refused_targets(&self) -> Vec<std::net::SocketAddr> {
        Vec::new()
    }
    /// Creates a test from a validated spec; it is stored before this answers.
    async fn create(&self, spec: TestSpec) -> Result<TestView, AppError>;
    /// A test's state, if it exists.
    async fn view(&self, id: &str) -> Result<Option<TestView>, AppError>;
    /// A page of the tests, newest first (see [`ListQuery`]), from list lines: never a
    /// test's whole state.
    async fn list_page(&self, query: &ListQuery) -> Result<Vec<TestListItem>, AppError>;
    /// The first page of the tests with the default limit, newest first.
    async fn list(&self) -> Result<Vec<TestListItem>, AppError> {
        self.list_page(&ListQuery::default()).await
    }
    /// Asks a test's drivers to stop.
    async fn stop(&self, id: &str) -> Result<TestView, AppError>;
    /// Deletes a finished test and everything stored of it: [`AppError::NotFound`] for an
    /// unknown test, [`AppError::Conflict`] while it has not ended.
    async fn delete(&self, id: &str) -> Result<(), AppError>;
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

/// Refuses (403: the spec is valid, the deployment's policy says no) a target that
/// resolves to a link-local (metadata service) address, or to one of the `refused`
/// endpoints (the orchestrator itself, its brokers): every address each request's host
/// resolves to is checked, not just the URL's text. A URL that is itself a forbidden
/// address literal is an invalid spec everywhere (422, from the spec's validation). A name that does not
/// resolve here is let through (the drivers may see other DNS); they check again.
pub async fn check_target(
    spec: &TestSpec,
    refused: &[std::net::SocketAddr],
) -> Result<(), AppError> {
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
                        status: StatusCode::FORBIDDEN,
                        field,
                        message: format!(
                            "`{}` resolves to {}, {why}; loadwave does not send load there",
                            url.host,
                            addr.ip()
                        ),
                    });
                }
                if refused
                    .iter()
                    .any(|own| loadwave_proto::spec::reaches(addr, *own))
                {
                    return Err(AppError::Invalid {
                        status: StatusCode::FORBIDDEN,
                        field,
                        message: format!(
                            "`{}` resolves to {addr}, the orchestrator's own API or one of its Kafka brokers; loadwave does not send load there (start the orchestrator with --allow-self-target to test it)",
                            url.host
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Refuses a spec whose test configuration (the message each driver gets) would be too
/// large for the bus to deliver, naming its largest field.
pub fn check_deliverable(spec: &TestSpec) -> Result<(), AppError> {
    let config = Message::TestConfig(TestConfig {
        test_id: "0".repeat(32),
        driver_id: "d".repeat(SIZING_DRIVER_ID_LEN),
        driver_index: u32::MAX,
        spec: spec.clone(),
    });
    let size = config.encode().len();
    if size <= MAX_CONFIG_BYTES {
        return Ok(());
    }
    let mut parts: Vec<(String, usize)> = vec![
        ("body".into(), encoded_len(&spec.body)),
        ("headers".into(), encoded_len(&spec.headers)),
        ("thresholds".into(), encoded_len(&spec.thresholds)),
        ("name".into(), encoded_len(&spec.name)),
    ];
    for (i, r) in spec.requests.iter().flatten().enumerate() {
        parts.push((format!("requests[{i}].body"), encoded_len(&r.body)));
        parts.push((format!("requests[{i}].headers"), encoded_len(&r.headers)));
        parts.push((format!("requests[{i}].url"), encoded_len(&r.url)));
    }
    // One part holding most of it is named; a size spread over many is the spec's.
    let field = parts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .filter(|(_, n)| *n >= size / 2)
        .map(|(f, _)| f)
        .unwrap_or_else(|| "spec".to_string());
    Err(AppError::Invalid {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        field,
        message: format!(
            "the test's configuration would be {size} bytes; the message bus delivers at most {MAX_CONFIG_BYTES}"
        ),
    })
}

fn encoded_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0)
}

/// The router, without authentication: for API Gateway with IAM authorization in front
/// (the Lambda function) and in-process tests. The local orchestrator serves
/// [`secured_app`].
pub fn app(backend: AppState) -> Router {
    Router::new()
        .route("/tests", get(list_tests).post(create_test))
        .route("/tests/{id}", get(get_test).delete(delete_test))
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

/// The router behind `security`: a bearer token (or the console's session cookie) on
/// every route but `/healthz` and `/readyz`, a `Host` this orchestrator serves, and JSON
/// bodies only (see [`crate::access`]). `GET /login?code=...` lets the console in.
pub fn secured_app(backend: AppState, security: crate::access::ApiSecurity) -> Router {
    app(backend).layer(axum::middleware::from_fn_with_state(
        security,
        crate::access::guard,
    ))
}

/// Deletes every finished test that ended more than `retain_ms` before `now_ms`, as listed
/// by `store`'s index; returns how many went. A test deleted meanwhile, or one that
/// cannot be, is skipped.
pub async fn sweep_expired(
    backend: &dyn Backend,
    store: &crate::store::TestStore,
    retain_ms: u64,
    now_ms: u64,
) -> Result<usize, AppError> {
    let ids = store
        .finished_before(now_ms.saturating_sub(retain_ms))
        .await?;
    let mut deleted = 0;
    for id in ids {
        match backend.delete(&id).await {
            Ok(()) => deleted += 1,
            Err(AppError::NotFound(_)) | Err(AppError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// Start a test.
#[utoipa::path(post, path = "/tests", request_body = TestSpec,
    responses(
        (status = 201, description = "Created; the test's initial state (secret headers and bodies redacted)", body = TestView),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 421, description = "`Host` is not one this orchestrator serves", body = ErrorBody),
        (status = 403, description = "A valid spec this deployment refuses: over a cap (`LOADWAVE_MAX_*`), or a target that resolves to an address loadwave does not load (link-local, metadata services, this orchestrator or its brokers)", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid, or the test's configuration is too large to deliver", body = ErrorBody),
    ))]
async fn create_test(
    State(orch): State<AppState>,
    SpecJson(mut spec): SpecJson,
) -> Result<(StatusCode, Json<TestView>), AppError> {
    let limits = orch.limits();
    // A valid spec over this deployment's caps is refused by policy: 403, not 422.
    limits.check(&spec).map_err(|over| AppError::Invalid {
        status: StatusCode::FORBIDDEN,
        field: over.field.to_string(),
        message: over.message,
    })?;
    // A closed-model test bound by time gets the request cap as its count.
    limits.bound(&mut spec);
    check_deliverable(&spec)?;
    check_target(&spec, &orch.refused_targets()).await?;
    let view = orch.create(spec).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The tests, newest first, a page at a time: at most `limit` (default 100, at most
/// 1000) after the test `cursor`. The next page's cursor is the last id of this one; a
/// page shorter than the limit is the last.
#[utoipa::path(get, path = "/tests", params(ListQuery), responses((status = 200, body = Vec<TestListItem>),
    (status = 400, description = "`limit` or `cursor` out of range", body = ErrorBody),
    (status = 401, description = "No valid bearer token", body = ErrorBody),
    (status = 421, description = "`Host` is not one this orchestrator serves", body = ErrorBody)))]
async fn list_tests(
    State(orch): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<TestListItem>>, AppError> {
    let invalid = |field: &str, message: String| AppError::Invalid {
        status: StatusCode::BAD_REQUEST,
        field: field.into(),
        message,
    };
    let Query(query) = query.map_err(|e| invalid("query", e.body_text()))?;
    if query
        .limit
        .is_some_and(|l| !(1..=LIST_MAX_LIMIT).contains(&l))
    {
        return Err(invalid(
            "limit",
            format!("limit must be between 1 and {LIST_MAX_LIMIT}"),
        ));
    }
    if query
        .cursor
        .as_ref()
        .is_some_and(|c| c.chars().count() > 64)
    {
        return Err(invalid(
            "cursor",
            "cursor is longer than 64 characters".into(),
        ));
    }
    Ok(Json(orch.list_page(&query).await?))
}

fn unknown(id: &str) -> AppError {
    AppError::NotFound(format!("no test with id `{id}`"))
}

/// A test's state: status, drivers, summary, timeline, verdict.
#[utoipa::path(get, path = "/tests/{id}",
    params(("id" = String, Path, description = "Test id")),
    responses((status = 200, description = "The test (secret headers and bodies redacted)", body = TestView), (status = 404, body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 421, description = "`Host` is not one this orchestrator serves", body = ErrorBody)))]
async fn get_test(
    State(orch): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TestView>, AppError> {
    orch.view(&id).await?.map(Json).ok_or_else(|| unknown(&id))
}

/// Delete a finished test and everything stored of it.
#[utoipa::path(delete, path = "/tests/{id}",
    params(("id" = String, Path, description = "Test id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody),
        (status = 409, description = "Still running; stop it first", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 421, description = "`Host` is not one this orchestrator serves", body = ErrorBody)))]
async fn delete_test(
    State(orch): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    orch.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stop a test: drivers stop sending, finish what is in flight and report.
#[utoipa::path(post, path = "/tests/{id}/stop",
    params(("id" = String, Path, description = "Test id")),
    responses((status = 202, body = TestView), (status = 404, body = ErrorBody),
        (status = 409, description = "Already ended", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 421, description = "`Host` is not one this orchestrator serves", body = ErrorBody)))]
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
    responses((status = 200, content_type = "text/html", body = String), (status = 404, body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 421, description = "`Host` is not one this orchestrator serves", body = ErrorBody)))]
async fn test_report(
    State(orch): State<AppState>,
    Path(id): Path<String>,
) -> Result<Html<String>, AppError> {
    let view = orch.view(&id).await?.ok_or_else(|| unknown(&id))?;
    Ok(Html(report::render(&view)))
}

/// Known drivers.
#[utoipa::path(get, path = "/drivers", responses((status = 200, body = Vec<DriverInfo>),
    (status = 401, description = "No valid bearer token", body = ErrorBody),
    (status = 421, description = "`Host` is not one this orchestrator serves", body = ErrorBody)))]
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
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, body = Health)))]
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
#[utoipa::path(get, path = "/readyz", security(()), responses(
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
        delete_test,
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
    )),
    modifiers(&TokenSecurity),
    security(("bearer" = []), ("session" = []))
)]
struct ApiDoc;

/// Declares how the local orchestrator authenticates: a bearer token, or the console's
/// session cookie. (Behind API Gateway, IAM signatures take their place.)
struct TokenSecurity;

impl utoipa::Modify for TokenSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The orchestrator's token, from `<data-dir>/token`, `--token-file` or `LOADWAVE_TOKEN`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::access::SESSION_COOKIE,
                "Set by the one-time login URL the orchestrator prints at start",
            ))),
        );
    }
}

/// The OpenAPI document of this API, generated from the code.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The OpenAPI document as served: [`openapi_document`] with the spec's validation rules
/// (ranges, lengths, patterns, how fields combine) added to its schemas, so a client or a
/// fuzzer knows exactly which specs are accepted (see `loadwave_proto::openapi`).
pub fn openapi_json() -> serde_json::Value {
    let mut doc = serde_json::to_value(openapi_document()).unwrap_or_default();
    if let Some(schemas) = doc.pointer_mut("/components/schemas") {
        loadwave_proto::openapi::tighten(schemas);
    }
    doc
}

async fn openapi() -> impl IntoResponse {
    Json(openapi_json())
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
