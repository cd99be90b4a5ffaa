//! The notification API: what was sent for an order, and the templates it is rendered from.

use axum::extract::State;
use chrono::{DateTime, Utc};
use conveyor_platform::auth::{AuthErrors, Caller, Operator};
use conveyor_platform::http::Problem;
use conveyor_platform::{ApiError, ApiResult, Json, Path};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::EventType;
use crate::render;
use crate::repo::{self, NotificationRow, TemplateRow};

/// Characters of a subject template.
pub const MAX_SUBJECT_CHARS: usize = 200;
/// Characters of a body template.
pub const MAX_BODY_CHARS: usize = 10_000;

/// What `/openapi.json` and `/docs` say this API is.
const DESCRIPTION: &str = "Notifications: what was sent for an order, and the templates (minijinja) rendered for `order.confirmed` and `order.cancelled` and delivered by webhook.";

pub fn router() -> OpenApiRouter<PgPool> {
    conveyor_platform::http::api_routes(DESCRIPTION).routes(routes!(list_notifications)).routes(routes!(list_templates)).routes(routes!(get_template, put_template))
}

/// A template in minijinja syntax. Variables: `order_id`, `customer_id`, `event_type`,
/// `status`, `reason` and `detail` (null unless cancelled), `total` (e.g. "25.99 EUR"),
/// `lines` (each `product_id`, `name` or null, `quantity`, `unit_price`), `placed_at`
/// (RFC 3339), `data_source` (`lookup` or `event`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TemplateView {
    /// `order.confirmed` or `order.cancelled`.
    pub event_type: String,
    pub subject: String,
    pub body: String,
    pub updated_at: DateTime<Utc>,
}

impl From<TemplateRow> for TemplateView {
    fn from(r: TemplateRow) -> Self {
        TemplateView { event_type: r.event_type, subject: r.subject, body: r.body, updated_at: r.updated_at }
    }
}

/// A template's new text; both parts are replaced. Templates run in a sandbox: text,
/// `{{ expression }}`, `{% if %}`, and `{% for %}` over a variable (`lines`); the filters
/// `upper`, `lower`, `title`, `capitalize`, `trim`, `length`, `default`, `first`, `last`,
/// `round`, `escape`, `replace`; the tests `defined`, `undefined`, `none`, `odd`, `even`.
/// No functions (`debug`, `range`, …), `set`, `with`, macros, `include`, `filter` blocks,
/// and no `~`, `+`, `*`, `**`. Each part must render, for the largest order the contracts
/// allow, within 50,000 steps of work (fuel) and to at most 1,000 (subject) or 100,000
/// (body) characters.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateUpdate {
    /// One line, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub subject: String,
    /// 1 to 10,000 characters.
    #[schema(min_length = 1, max_length = 10_000)]
    pub body: String,
}

/// A notification as delivered.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationView {
    /// The same for every attempt at the same (order, event type).
    pub id: Uuid,
    pub order_id: Uuid,
    pub event_type: String,
    pub customer_id: Uuid,
    pub subject: String,
    pub body: String,
    /// `lookup` (the order API answered) or `event` (rendered from the event alone).
    pub data_source: String,
    /// The delivery attempt that succeeded, 1 for the first.
    pub attempts: i32,
    pub delivered_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl From<NotificationRow> for NotificationView {
    fn from(r: NotificationRow) -> Self {
        NotificationView {
            id: r.id,
            order_id: r.order_id,
            event_type: r.event_type,
            customer_id: r.customer_id,
            subject: r.subject,
            body: r.body,
            data_source: r.data_source,
            attempts: r.attempts,
            delivered_at: r.delivered_at,
            created_at: r.created_at,
        }
    }
}

/// The notifications delivered for an order (none yet is an empty list, not a 404: this
/// service does not know which orders exist).
/// The order's customer sees them, and operators.
#[utoipa::path(get, path = "/orders/{order_id}/notifications", tag = "notifications", params(("order_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Vec<NotificationView>), (status = 400, body = Problem, content_type = "application/problem+json"), AuthErrors))]
async fn list_notifications(caller: Caller, State(pool): State<PgPool>, Path(order_id): Path<Uuid>) -> ApiResult<Json<Vec<NotificationView>>> {
    let mut conn = pool.acquire().await?;
    let rows = repo::notifications_of(&mut conn, order_id).await?;
    for row in &rows {
        caller.require_customer(row.customer_id)?;
    }
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

/// Every template. Operators only.
#[utoipa::path(get, path = "/templates", tag = "templates", security(("bearer" = [])), responses((status = 200, body = Vec<TemplateView>), AuthErrors))]
async fn list_templates(_: Operator, State(pool): State<PgPool>) -> ApiResult<Json<Vec<TemplateView>>> {
    let mut conn = pool.acquire().await?;
    Ok(Json(repo::templates(&mut conn).await?.into_iter().map(Into::into).collect()))
}

/// The template of one event type. Operators only.
#[utoipa::path(get, path = "/templates/{event_type}", tag = "templates", params(("event_type" = String, Path, description = "`order.confirmed` or `order.cancelled`")), security(("bearer" = [])),
    responses((status = 200, body = TemplateView), (status = 404, body = Problem, content_type = "application/problem+json"), AuthErrors))]
async fn get_template(_: Operator, State(pool): State<PgPool>, Path(event_type): Path<String>) -> ApiResult<Json<TemplateView>> {
    let event_type = parse_event_type(&event_type)?;
    let mut conn = pool.acquire().await?;
    let row = repo::template(&mut conn, event_type).await?.ok_or_else(|| ApiError::NotFound(format!("no template is stored for {event_type}")))?;
    Ok(Json(row.into()))
}

/// Replaces the template of one event type. Both parts must parse, stay within the sandbox
/// and render for sample events of that type, the largest order included, within the
/// limits of work and output (an unknown variable or a template too costly is refused
/// here, not when a customer is due a notification). Operators only.
#[utoipa::path(put, path = "/templates/{event_type}", tag = "templates", request_body = TemplateUpdate,
    params(("event_type" = String, Path, description = "`order.confirmed` or `order.cancelled`")), security(("bearer" = [])),
    responses(AuthErrors,
        (status = 200, body = TemplateView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn put_template(_: Operator, State(pool): State<PgPool>, Path(event_type): Path<String>, Json(req): Json<TemplateUpdate>) -> ApiResult<Json<TemplateView>> {
    let event_type = parse_event_type(&event_type)?;
    check_text("subject", &req.subject, MAX_SUBJECT_CHARS, false)?;
    check_text("body", &req.body, MAX_BODY_CHARS, true)?;
    for (part, source) in [(render::Part::Subject, &req.subject), (render::Part::Body, &req.body)] {
        if let Some(problem) = render::check(part, source, event_type) {
            return Err(ApiError::Unprocessable(problem));
        }
    }
    let mut conn = pool.acquire().await?;
    let row = repo::put_template(&mut conn, event_type, &req.subject, &req.body).await?;
    tracing::info!(%event_type, "template replaced");
    Ok(Json(row.into()))
}

fn parse_event_type(s: &str) -> ApiResult<EventType> {
    EventType::parse(s).ok_or_else(|| {
        let known: Vec<&str> = EventType::ALL.iter().map(EventType::as_str).collect();
        ApiError::NotFound(format!("no template for event type {:?}: templates exist for {}", s.chars().take(64).collect::<String>(), known.join(" and ")))
    })
}

/// Size and characters: a subject is one line; a body may have line breaks and tabs. No
/// other control characters (Postgres refuses NUL in text, and none of them belongs in a
/// message).
fn check_text(what: &str, text: &str, max: usize, multiline: bool) -> ApiResult<()> {
    let chars = text.chars().count();
    if text.trim().is_empty() || chars > max {
        return Err(ApiError::Unprocessable(format!("{what} must have 1 to {max} characters (not only spaces), not {chars}")));
    }
    let allowed = |c: char| multiline && matches!(c, '\n' | '\r' | '\t');
    if text.chars().any(|c| c.is_control() && !allowed(c)) {
        let rule = if multiline { "control characters other than line breaks and tabs" } else { "line breaks or other control characters" };
        return Err(ApiError::Unprocessable(format!("{what} must not contain {rule}")));
    }
    Ok(())
}
