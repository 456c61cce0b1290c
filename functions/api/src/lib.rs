//! The loadwave REST API as an AWS Lambda function behind API Gateway.
//!
//! The same axum router as the local orchestrator ([`loadwave_orchestrator::app`]) over
//! the store-backed [`loadwave_orchestrator::StoreBackend`]: no controller loop runs
//! here. `lambda_http` turns API Gateway REST (v1) and HTTP API (v2) events into
//! requests; [`strip_stage`] removes a named stage from the path so `/prod/tests` routes
//! like `/tests`.
//!
//! Environment: `LOADWAVE_STORE`, `KAFKA_BROKERS`, `LOADWAVE_TOPIC_PREFIX`,
//! `LOADWAVE_KAFKA_AUTH`, `LOADWAVE_ECS_*`, and the AWS SDK's own.

use std::sync::Arc;

use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};
use loadwave_orchestrator::api::Backend;
use loadwave_orchestrator::app;
use tower::ServiceExt;

/// The stage API Gateway put in front of the path, if a named one (`$default` is none).
fn stage_of(req: &Request) -> Option<String> {
    let stage = match req.request_context_ref()? {
        RequestContext::ApiGatewayV1(c) => c.stage.clone(),
        RequestContext::ApiGatewayV2(c) => c.stage.clone(),
        _ => None,
    }?;
    (stage != "$default" && !stage.is_empty()).then_some(stage)
}

/// Removes a leading `/{stage}` from the request's path, keeping the query.
pub fn strip_stage(mut req: Request) -> Request {
    let Some(stage) = stage_of(&req) else {
        return req;
    };
    let prefix = format!("/{stage}");
    let path = req.uri().path();
    let rest = match path.strip_prefix(&prefix) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => return req,
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = lambda_http::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// The Lambda handler: the router with the stage stripped from every path.
pub fn handler(
    backend: Arc<dyn Backend>,
) -> impl tower::Service<
    Request,
    Response = lambda_http::http::Response<loadwave_orchestrator::api::ResponseBody>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    app(backend).map_request(strip_stage)
}
