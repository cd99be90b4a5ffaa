//! The coordinator's tables: sagas and their steps.

use chrono::{DateTime, Utc};
use conveyor_contracts::OrderSummary;
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use crate::saga::{State, Step};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SagaRow {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub summary: Json<OrderSummary>,
    pub state: String,
    pub deadline: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub payment_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

impl SagaRow {
    pub fn state(&self) -> State {
        State::parse(&self.state).unwrap_or_else(|| panic!("saga state {:?} violates the sagas CHECK", self.state))
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRow {
    pub order_id: Uuid,
    pub n: i32,
    pub step: String,
    pub compensation: bool,
    pub command: Value,
    pub sent_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
    pub timed_out_at: Option<DateTime<Utc>>,
    pub reply: Option<Value>,
    pub outcome: Option<String>,
    pub replied_at: Option<DateTime<Utc>>,
}

macro_rules! saga_columns {
    () => {
        "order_id, customer_id, summary, state, deadline, reason, detail, payment_id, created_at, updated_at, ended_at"
    };
}

/// Starts the saga of `order` in `reserving`; `false` if it exists already (a repeated start).
pub async fn start(conn: &mut PgConnection, order: &OrderSummary, deadline: DateTime<Utc>) -> sqlx::Result<bool> {
    let started = sqlx::query(
        "INSERT INTO sagas (order_id, customer_id, summary, state, deadline) VALUES ($1, $2, $3, 'reserving', $4) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order.order_id)
    .bind(order.customer_id)
    .bind(Json(order))
    .bind(deadline)
    .execute(conn)
    .await?;
    Ok(started.rows_affected() == 1)
}

/// The saga, locked until the transaction ends (its handlers also hold its advisory key).
pub async fn lock(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Option<SagaRow>> {
    sqlx::query_as(concat!("SELECT ", saga_columns!(), " FROM sagas WHERE order_id = $1 FOR UPDATE")).bind(order_id).fetch_optional(conn).await
}

pub async fn get(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Option<SagaRow>> {
    sqlx::query_as(concat!("SELECT ", saga_columns!(), " FROM sagas WHERE order_id = $1")).bind(order_id).fetch_optional(conn).await
}

/// What a transition changes on the saga.
pub struct Transition<'a> {
    pub to: State,
    pub deadline: Option<DateTime<Utc>>,
    pub reason: Option<&'a str>,
    pub detail: Option<&'a str>,
    pub payment_id: Option<Uuid>,
}

/// Moves the saga to `t.to`; a reason, detail or payment id already set is kept when `t`
/// has none. A terminal state ends the saga.
pub async fn transition(conn: &mut PgConnection, order_id: Uuid, t: &Transition<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sagas SET state = $2, deadline = $3, reason = coalesce($4, reason), detail = coalesce($5, detail),
             payment_id = coalesce($6, payment_id), updated_at = now(), ended_at = CASE WHEN $7 THEN now() END
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(t.to.as_str())
    .bind(t.deadline)
    .bind(t.reason)
    .bind(t.detail)
    .bind(t.payment_id)
    .bind(t.to.is_terminal())
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a command sent: the saga's next step.
pub async fn add_step(conn: &mut PgConnection, order_id: Uuid, step: Step, command: &Value, deadline: Option<DateTime<Utc>>) -> sqlx::Result<i32> {
    sqlx::query_scalar(
        "INSERT INTO saga_steps (order_id, n, step, compensation, command, deadline)
         SELECT $1, coalesce(max(n), 0) + 1, $2, $3, $4, $5 FROM saga_steps WHERE order_id = $1
         RETURNING n",
    )
    .bind(order_id)
    .bind(step.as_str())
    .bind(step.is_compensation())
    .bind(command)
    .bind(deadline)
    .fetch_one(conn)
    .await
}

/// Records `reply` on the latest `step` still without one; answers when that step was
/// sent (`None`: no such step waits, so the reply is a repeat).
pub async fn record_reply(conn: &mut PgConnection, order_id: Uuid, step: Step, reply: &Value, outcome: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "UPDATE saga_steps SET reply = $3, outcome = $4, replied_at = now()
         WHERE (order_id, n) = (SELECT order_id, max(n) FROM saga_steps WHERE order_id = $1 AND step = $2 AND reply IS NULL GROUP BY order_id)
         RETURNING sent_at",
    )
    .bind(order_id)
    .bind(step.as_str())
    .bind(reply)
    .bind(outcome)
    .fetch_optional(conn)
    .await
}

/// Marks the latest `step` without a reply as timed out.
pub async fn time_out(conn: &mut PgConnection, order_id: Uuid, step: Step) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE saga_steps SET timed_out_at = now()
         WHERE (order_id, n) = (SELECT order_id, max(n) FROM saga_steps WHERE order_id = $1 AND step = $2 AND reply IS NULL GROUP BY order_id)",
    )
    .bind(order_id)
    .bind(step.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the saga has sent `step` already.
pub async fn has_step(conn: &mut PgConnection, order_id: Uuid, step: Step) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM saga_steps WHERE order_id = $1 AND step = $2)").bind(order_id).bind(step.as_str()).fetch_one(conn).await
}

pub async fn steps_of(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Vec<StepRow>> {
    sqlx::query_as(
        "SELECT order_id, n, step, compensation, command, sent_at, deadline, timed_out_at, reply, outcome, replied_at
         FROM saga_steps WHERE order_id = $1 ORDER BY n",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
}

/// Sagas by order id (UUID v7: oldest first), those after `after`, in `state` if given,
/// and not changed for `older_than` seconds if given.
pub async fn list(conn: &mut PgConnection, state: Option<State>, older_than_secs: Option<f64>, after: Option<Uuid>, limit: i64) -> sqlx::Result<Vec<SagaRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        saga_columns!(),
        " FROM sagas WHERE ($1::text IS NULL OR state = $1) AND ($2::float8 IS NULL OR updated_at < now() - make_interval(secs => $2))
          AND ($3::uuid IS NULL OR order_id > $3) ORDER BY order_id LIMIT $4"
    ))
    .bind(state.map(|s| s.as_str()))
    .bind(older_than_secs)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Sagas not over, by state; and how many of them have not moved for `overdue_secs`.
pub async fn in_flight(conn: &mut PgConnection, overdue_secs: f64) -> sqlx::Result<Vec<(String, i64, i64)>> {
    sqlx::query_as(
        "SELECT state, count(*), count(*) FILTER (WHERE updated_at < now() - make_interval(secs => $1))
         FROM sagas WHERE ended_at IS NULL GROUP BY state",
    )
    .bind(overdue_secs)
    .fetch_all(conn)
    .await
}
