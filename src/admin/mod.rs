//! The admin endpoint (docs/ARCHITECTURE.md §6): `/health`, `/ready/read`, `/status`, `/metrics` and `/dashboard` over HTTP,
//! and the SQL console on the virtual database `pgsplit`.

pub mod console;
pub mod metrics;
pub mod status;
mod tls;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::auth::constant_time_eq;
use crate::state::Shared;

/// The dashboard page (self-contained: no CDN).
const DASHBOARD: &str = include_str!("dashboard.html");

/// The admin HTTP application.
pub fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { Html("<a href=\"/dashboard\">pgsplit dashboard</a>") }),
        )
        .route("/health", get(health))
        .route("/ready/read", get(ready_read))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics_text))
        .route("/dashboard", get(|| async { Html(DASHBOARD) }))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ))
        .with_state(shared)
}

/// Serves the admin endpoint on `listener` until the task is dropped; over TLS when `tls.client_mode` is not `disable` (pgsplit's certificate).
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let served = match shared.client_tls.load_full() {
        Some(_) => match tls::TlsListener::new(listener, shared.clone()) {
            Ok(listener) => axum::serve(listener, app(shared)).await,
            Err(e) => Err(e),
        },
        None => axum::serve(listener, app(shared)).await,
    };
    if let Err(e) = served {
        tracing::warn!(error = %e, "admin endpoint stopped");
    }
}

/// With `admin_token` set, every request needs `Authorization: Bearer <token>` (or `?token=` for the dashboard
/// page opened in a browser).
async fn require_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let config = shared.config();
    let Some(token) = config.admin_token.as_deref().filter(|t| !t.is_empty()) else {
        return next.run(request).await;
    };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let query = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="));
    let given = bearer.or(query);
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        next.run(request).await
    } else {
        let mut r = (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "missing or wrong admin token"})),
        )
            .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    }
}

/// 200 when pgsplit can serve writes (a primary is known and up), 503 otherwise, with the checks as JSON.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let primary = shared.router.primary();
    let servers = shared.monitor.snapshot();
    let primary_ok = primary
        .as_ref()
        .is_ok_and(|&i| servers.get(i).is_some_and(|s| s.up));
    let checks = json!([
        {
            "name": "primary",
            "ok": primary_ok,
            "detail": match &primary {
                Ok(i) => servers.get(*i).map_or_else(String::new, |s| format!("{} ({})", s.name, s.address)),
                Err(reason) => reason.to_string(),
            },
        },
        { "name": "accepting_clients", "ok": !shared.is_paused(), "detail": if shared.is_paused() { "paused" } else { "running" } },
    ]);
    let ok = primary_ok;
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({ "status": if ok { "ok" } else { "unavailable" }, "checks": checks })),
    )
        .into_response()
}

/// 200 when at least one server can take reads.
async fn ready_read(State(shared): State<Arc<Shared>>) -> Response {
    let servers = shared.monitor.snapshot();
    let replicas: Vec<&str> = servers
        .iter()
        .filter(|s| s.eligible)
        .map(|s| s.name.as_str())
        .collect();
    let primary_reads = shared.config().routing.fallback == crate::config::Fallback::Primary
        && shared.config().routing.primary_reads != crate::config::PrimaryReads::Never
        && shared.router.primary().is_ok();
    let ok = !replicas.is_empty() || primary_reads;
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "ready": ok, "eligible_replicas": replicas, "primary_fallback": primary_reads }))).into_response()
}

async fn status_json(State(shared): State<Arc<Shared>>) -> Response {
    Json(status::status(&shared)).into_response()
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    match metrics::render(&shared) {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics").into_response(),
    }
}
