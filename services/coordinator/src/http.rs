//! The coordinator API: inspect a saga, find the ones that are stuck. Operators only.

use axum::extract::State as AxumState;
use chrono::{DateTime, Utc};
use conveyor_platform::auth::{AuthErrors, Operator};
use conveyor_platform::http::{Page, PageQuery, Problem};
use conveyor_platform::{ApiError, ApiResult, Json, Path, Query};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::repo::{self, SagaRow, StepRow};
use crate::saga::State;

/// What `/openapi.json` and `/docs` say this API is.
const DESCRIPTION: &str = "Saga coordinator: the order saga run as an orchestration (each order placed in orchestration mode has one saga: its state, every command sent and reply received, deadlines and compensations).";

pub fn router() -> OpenApiRouter<PgPool> {
    conveyor_platform::http::api_routes(DESCRIPTION).routes(routes!(list_sagas)).routes(routes!(get_saga))
}

/// A saga: where it is and why.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SagaView {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    /// `reserving`, `paying`, `confirming`, `cancelling`, `confirmed` or `cancelled`.
    pub state: String,
    /// When the reply the saga waits for is due (reserving, paying).
    pub deadline: Option<DateTime<Utc>>,
    /// Why the order is cancelled: `out_of_stock`, `payment_declined` or `timeout`.
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub payment_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Every command sent, in order (only in `GET /sagas/{order_id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepView>>,
}

/// A command the coordinator sent, and what came of it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub n: i32,
    /// `reserve_stock`, `capture_payment`, `confirm_order`, `cancel_order`, `release_stock` or `refund_payment`.
    pub step: String,
    /// Undoes an earlier step (`release_stock`, `refund_payment`).
    pub compensation: bool,
    pub command: Value,
    pub sent_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
    /// When the deadline passed without a reply (a reply may have come later).
    pub timed_out_at: Option<DateTime<Utc>>,
    pub reply: Option<Value>,
    pub outcome: Option<String>,
    pub replied_at: Option<DateTime<Utc>>,
    /// From sent to replied.
    pub duration_ms: Option<f64>,
}

impl SagaView {
    fn new(r: SagaRow, steps: Option<Vec<StepRow>>) -> Self {
        SagaView {
            order_id: r.order_id,
            customer_id: r.customer_id,
            state: r.state,
            deadline: r.deadline,
            reason: r.reason,
            detail: r.detail,
            payment_id: r.payment_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
            ended_at: r.ended_at,
            steps: steps.map(|s| s.into_iter().map(StepView::from).collect()),
        }
    }
}

impl From<StepRow> for StepView {
    fn from(s: StepRow) -> Self {
        let duration_ms = s.replied_at.map(|at| (at - s.sent_at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
        StepView {
            n: s.n,
            step: s.step,
            compensation: s.compensation,
            command: s.command,
            sent_at: s.sent_at,
            deadline: s.deadline,
            timed_out_at: s.timed_out_at,
            reply: s.reply,
            outcome: s.outcome,
            replied_at: s.replied_at,
            duration_ms,
        }
    }
}

/// `?state=&older_than=&limit=&after=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SagaQuery {
    /// Only sagas in this state.
    pub state: Option<String>,
    /// Only sagas that have not changed for this long: a number with a unit, `s`, `m`, `h`
    /// or `d` (`90s`, `5m`), up to 365 days.
    pub older_than: Option<String>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `next` cursor of the previous page.
    pub after: Option<Uuid>,
}

/// Sagas by order id (oldest first), filtered: `GET /sagas?state=paying&older_than=5m`
/// finds those stuck waiting for payment.
#[utoipa::path(get, path = "/sagas", tag = "sagas", params(SagaQuery), security(("bearer" = [])),
    responses(AuthErrors,
        (status = 200, body = Page<SagaView>),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn list_sagas(_: Operator, AxumState(pool): AxumState<PgPool>, Query(q): Query<SagaQuery>) -> ApiResult<Json<Page<SagaView>>> {
    let limit = PageQuery { limit: q.limit, after: q.after }.limit()?;
    let state = q.state.as_deref().map(parse_state).transpose()?;
    let older_than = q.older_than.as_deref().map(parse_duration).transpose()?;
    let mut conn = pool.acquire().await?;
    let rows = repo::list(&mut conn, state, older_than, q.after, limit + 1).await?;
    let page = Page::from_fetched(rows, limit, |r| r.order_id);
    Ok(Json(Page { items: page.items.into_iter().map(|r| SagaView::new(r, None)).collect(), next: page.next }))
}

/// One order's saga with every step.
#[utoipa::path(get, path = "/sagas/{order_id}", tag = "sagas", params(("order_id" = Uuid, Path)), security(("bearer" = [])),
    responses(AuthErrors,
        (status = 200, body = SagaView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_saga(_: Operator, AxumState(pool): AxumState<PgPool>, Path(order_id): Path<Uuid>) -> ApiResult<Json<SagaView>> {
    let mut conn = pool.acquire().await?;
    let row = repo::get(&mut conn, order_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no saga for order {order_id}: it was not placed in orchestration mode, or the coordinator has not seen it yet")))?;
    let steps = repo::steps_of(&mut conn, order_id).await?;
    Ok(Json(SagaView::new(row, Some(steps))))
}

fn parse_state(s: &str) -> ApiResult<State> {
    State::parse(s).ok_or_else(|| {
        let known: Vec<&str> = State::ALL.iter().map(State::as_str).collect();
        ApiError::BadRequest(format!("state must be one of {}, not {:?}", known.join(", "), clip(s)))
    })
}

/// `90s`, `5m`, `2h`, `1d` as seconds.
fn parse_duration(s: &str) -> ApiResult<f64> {
    let bad = || ApiError::BadRequest(format!("older_than must be a number with a unit (s, m, h or d), like 90s or 5m, up to 365d; not {:?}", clip(s)));
    let unit_at = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
    let (number, unit) = s.split_at(unit_at);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let secs = n * match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs > 365.0 * 86_400.0 {
        return Err(bad());
    }
    Ok(secs)
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_stay_within_a_year() {
        assert_eq!(parse_duration("90s").unwrap(), 90.0);
        assert_eq!(parse_duration("5m").unwrap(), 300.0);
        assert_eq!(parse_duration("1.5h").unwrap(), 5400.0);
        assert_eq!(parse_duration("365d").unwrap(), 365.0 * 86_400.0);
        for bad in ["", "5", "m", "5x", "-5s", "5 s", "1e9s", "366d", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn states_are_the_sagas_own() {
        assert_eq!(parse_state("paying").unwrap(), State::Paying);
        let err = parse_state("lost").unwrap_err().to_string();
        assert!(err.contains("reserving, paying") && err.contains("\"lost\""), "{err}");
    }
}
