//! Every service's queue admin routes: depth, oldest pending age, dead letters, replay —
//! for operators only.

use axum::extract::{FromRef, State};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ApiError, ApiResult, Json, Path, Query};
use crate::auth::{AuthErrors, Operator};

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    PgPool: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(queue)).routes(routes!(dead_letters)).routes(routes!(replay_one)).routes(routes!(replay_all))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueStatus {
    /// Messages waiting, by table, topic and state (`pending`, `running`, `dead`).
    pub depth: Vec<DepthRow>,
    /// Age of the oldest message waiting to be handled or relayed, in seconds.
    pub oldest_pending_age_seconds: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DepthRow {
    pub table: String,
    pub topic: String,
    pub state: String,
    pub count: i64,
    pub oldest_age_seconds: Option<f64>,
}

/// The service's queues: how many messages wait where, and for how long.
#[utoipa::path(get, path = "/admin/queue", tag = "admin", security(("bearer" = [])), responses((status = 200, body = QueueStatus), AuthErrors))]
async fn queue(_: Operator, State(pool): State<PgPool>) -> ApiResult<Json<QueueStatus>> {
    let depth = conveyor_queue::depth(&pool)
        .await?
        .into_iter()
        .map(|d| DepthRow {
            table: serde_json::to_value(d.table).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            topic: d.topic,
            state: d.state,
            count: d.count,
            oldest_age_seconds: d.oldest_age_seconds,
        })
        .collect();
    let oldest = conveyor_queue::oldest_pending_age(&pool).await?.map(|d| d.as_secs_f64());
    Ok(Json(QueueStatus { depth, oldest_pending_age_seconds: oldest }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeadQuery {
    /// Only this topic.
    topic: Option<String>,
    /// The last id of the previous page.
    after: Option<Uuid>,
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    pub message_id: Uuid,
    pub topic: String,
    pub key: Option<String>,
    pub attempts: i32,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Every attempt's error, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub errors: serde_json::Value,
    pub published_at: chrono::DateTime<chrono::Utc>,
}

/// Dead messages, with every attempt's error.
#[utoipa::path(get, path = "/admin/dead-letters", tag = "admin", params(DeadQuery), security(("bearer" = [])), responses((status = 200, body = Vec<DeadLetterView>), AuthErrors))]
async fn dead_letters(_: Operator, State(pool): State<PgPool>, Query(q): Query<DeadQuery>) -> ApiResult<Json<Vec<DeadLetterView>>> {
    let limit = super::PageQuery { limit: q.limit, after: None }.limit()?;
    let dead = conveyor_queue::dead_letters(&pool, q.topic.as_deref(), q.after, limit).await?;
    let view = dead
        .into_iter()
        .map(|d| DeadLetterView {
            message_id: d.message_id,
            topic: d.topic,
            key: d.key,
            attempts: d.attempts,
            payload: d.payload,
            errors: d.errors,
            published_at: d.published_at,
        })
        .collect();
    Ok(Json(view))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    /// Messages made pending again.
    pub replayed: u64,
}

/// Makes one dead message pending again, with fresh attempts.
#[utoipa::path(post, path = "/admin/dead-letters/{id}/replay", tag = "admin",
    params(("id" = Uuid, Path, description = "message id")),
    security(("bearer" = [])),
    responses((status = 200, body = Replayed), (status = 404, description = "no dead message with this id"), AuthErrors))]
async fn replay_one(_: Operator, State(pool): State<PgPool>, Path(id): Path<Uuid>) -> ApiResult<Json<Replayed>> {
    if conveyor_queue::replay(&pool, id).await? {
        Ok(Json(Replayed { replayed: 1 }))
    } else {
        Err(ApiError::NotFound(format!("no dead message with id {id}")))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ReplayAllQuery {
    /// Only this topic (default: every dead message).
    topic: Option<String>,
}

/// Makes every dead message (of a topic) pending again.
#[utoipa::path(post, path = "/admin/dead-letters/replay", tag = "admin", params(ReplayAllQuery), security(("bearer" = [])), responses((status = 200, body = Replayed), AuthErrors))]
async fn replay_all(_: Operator, State(pool): State<PgPool>, Query(q): Query<ReplayAllQuery>) -> ApiResult<Json<Replayed>> {
    Ok(Json(Replayed { replayed: conveyor_queue::replay_all(&pool, q.topic.as_deref()).await? }))
}
