//! The HTTP endpoints: `/metrics` (Prometheus text format), `/healthz` (alive), `/readyz`
//! (in the consumer group), and the state queries Kafka Streams calls interactive queries:
//!
//! - `GET /rooms/{room}`: members with read positions, frontier, last seq, pending count,
//!   oldest pending message ([`RoomView`](crate::receipts::view::RoomView));
//! - `GET /rooms/{room}/messages/{message_id}`: pending / complete / expired / untracked,
//!   required readers, who has read it, who has not ([`MessageView`](crate::receipts::view::MessageView));
//! - `GET /rooms/{room}/users/{user}`: read position and unread count ([`UserView`](crate::receipts::view::UserView)).
//!
//! Errors are JSON `{"error": "..."}`: 404 for an unknown room, message or path, 503 while
//! starting or when the room's task is on another instance (naming the task), 500 for a
//! state store failure.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use crate::metrics::Metrics;
use crate::runtime::{Handle, QueryError};

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    handle: Arc<Handle>,
}

pub fn router(metrics: Arc<Metrics>, handle: Arc<Handle>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/rooms/{room}", get(room))
        .route("/rooms/{room}/messages/{message}", get(message))
        .route("/rooms/{room}/users/{user}", get(user))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(AppState { metrics, handle })
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    match s.handle.readiness() {
        Ok(tasks) => Json(json!({ "ready": true, "tasks": tasks })).into_response(),
        Err(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "reason": reason }))).into_response()
        }
    }
}

/// Runs a query on a blocking thread (it may read RocksDB and wait for the processor).
async fn answer<T: Serialize + Send + 'static>(
    handle: Arc<Handle>,
    uri: Uri,
    room: String,
    missing: &'static str,
    f: impl FnOnce(
            &mut crate::receipts::Engine<crate::store::rocks::RocksStore>,
            &str,
        ) -> Result<Option<T>, crate::receipts::EngineError>
        + Send
        + 'static,
) -> Response {
    let result = tokio::task::spawn_blocking({
        let handle = handle.clone();
        let room = room.clone();
        move || handle.query(&room, |engine| f(engine, &room))
    })
    .await;
    match result {
        Ok(Ok(Some(view))) => Json(view).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, missing),
        Ok(Err(e @ QueryError::NotOwned { .. })) => {
            // Ask the consumer group who has the task; send the client there.
            let lookup = tokio::task::spawn_blocking(move || handle.owner_of(&room)).await.ok().flatten();
            match lookup {
                Some(owner) => {
                    let location = format!("http://{owner}{}", uri.path());
                    let body = Json(json!({ "error": format!("{e}; its owner is {owner}"), "owner": owner }));
                    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)], body).into_response()
                }
                None => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{e}; its owner advertises no http.advertised address"),
                ),
            }
        }
        Ok(Err(e @ (QueryError::NotReady | QueryError::Restoring { .. } | QueryError::Rewinding))) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        Ok(Err(e @ QueryError::Engine { .. })) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn room(State(s): State<AppState>, uri: Uri, Path(room): Path<String>) -> Response {
    answer(s.handle, uri, room, "unknown room", |engine, room| engine.room_view(room)).await
}

async fn message(State(s): State<AppState>, uri: Uri, Path((room, message)): Path<(String, String)>) -> Response {
    answer(s.handle, uri, room, "unknown message", move |engine, room| engine.message_view(room, &message)).await
}

async fn user(State(s): State<AppState>, uri: Uri, Path((room, user)): Path<(String, String)>) -> Response {
    answer(s.handle, uri, room, "unknown room", move |engine, room| engine.user_view(room, &user)).await
}
