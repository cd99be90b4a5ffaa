//! The payment API: customers (create, read, top up) and the payments of an order.

use axum::extract::State;
use axum::http::{StatusCode, header};
use chrono::{DateTime, Utc};
use conveyor_contracts::{Currency, Money, limits};
use conveyor_platform::auth::{AuthErrors, Caller, Operator};
use conveyor_platform::http::Problem;
use conveyor_platform::{ApiError, ApiResult, Json, Path};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::repo::{self, CustomerRow, PaymentRow};

/// What `/openapi.json` and `/docs` say this API is.
const DESCRIPTION: &str = "Payments: customers and their balances (never below zero), top-ups, and the payments captured, declined or refunded for an order.";

pub fn router() -> OpenApiRouter<PgPool> {
    conveyor_platform::http::api_routes(DESCRIPTION).routes(routes!(create_customer)).routes(routes!(get_customer)).routes(routes!(top_up)).routes(routes!(order_payments))
}

/// A customer to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    /// Chosen by the client if it likes (e.g. to match another system); new otherwise.
    pub id: Option<Uuid>,
    /// 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// The one currency the customer pays in.
    pub currency: Currency,
    /// Opening balance in minor units, 0 (the default) to 10^15.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub balance_minor: Option<i64>,
}

/// Money to add to a balance.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    /// Minor units, at least 1; the balance must stay within 10^15.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount_minor: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CustomerView {
    pub id: Uuid,
    pub name: String,
    pub currency: String,
    /// Minor units of `currency`; never negative.
    pub balance_minor: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<CustomerRow> for CustomerView {
    fn from(r: CustomerRow) -> Self {
        CustomerView {
            id: r.id,
            name: r.name,
            currency: r.currency,
            balance_minor: r.balance_minor,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PaymentView {
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    /// The order's total.
    pub amount: Money,
    /// `captured`, `declined` or `refunded` (captured, then given back to the balance).
    pub status: String,
    /// Why it was declined.
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<PaymentRow> for PaymentView {
    fn from(r: PaymentRow) -> Self {
        let amount = r.amount();
        PaymentView {
            id: r.id,
            order_id: r.order_id,
            customer_id: r.customer_id,
            amount,
            status: r.status,
            reason: r.reason,
            created_at: r.created_at,
        }
    }
}

fn parse_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > limits::MAX_NAME_CHARS {
        return Err(ApiError::Unprocessable(format!("name must have 1 to {} characters, not {chars}", limits::MAX_NAME_CHARS)));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable("name must not contain control characters".into()));
    }
    Ok(name.to_owned())
}

/// Creates a customer with an opening balance. Operators only.
#[utoipa::path(post, path = "/customers", tag = "customers", request_body = NewCustomer, security(("bearer" = [])),
    responses(AuthErrors,
        (status = 201, body = CustomerView, description = "created; `Location` names it"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "a customer with this id exists"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn create_customer(
    _: Operator,
    State(pool): State<PgPool>,
    Json(req): Json<NewCustomer>,
) -> ApiResult<(StatusCode, [(header::HeaderName, String); 1], Json<CustomerView>)> {
    let name = parse_name(&req.name)?;
    let balance = req.balance_minor.unwrap_or(0);
    if !(0..=limits::MAX_BALANCE_MINOR).contains(&balance) {
        return Err(ApiError::Unprocessable(format!("balance_minor must be between 0 and {}, not {balance}", limits::MAX_BALANCE_MINOR)));
    }
    let id = req.id.unwrap_or_else(Uuid::now_v7);
    let mut tx = pool.begin().await?;
    let row = repo::insert_customer(&mut tx, id, &name, req.currency, balance)
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("a customer with id {id} exists already")))?;
    tx.commit().await?;
    tracing::info!(customer_id = %id, currency = %req.currency, balance_minor = balance, "customer created");
    Ok((StatusCode::CREATED, [(header::LOCATION, format!("/customers/{id}"))], Json(row.into())))
}

/// One customer and its balance: the customer's own, or any for an operator.
#[utoipa::path(get, path = "/customers/{id}", tag = "customers", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses(AuthErrors,
        (status = 200, body = CustomerView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_customer(caller: Caller, State(pool): State<PgPool>, Path(id): Path<Uuid>) -> ApiResult<Json<CustomerView>> {
    caller.require_customer(id)?;
    let mut conn = pool.acquire().await?;
    let row = repo::get_customer(&mut conn, id).await?.ok_or_else(|| customer_not_found(id))?;
    Ok(Json(row.into()))
}

/// Adds money to a customer's balance; answers the customer with its new balance. Operators
/// only.
#[utoipa::path(post, path = "/customers/{id}/top-up", tag = "customers", params(("id" = Uuid, Path)), request_body = TopUp, security(("bearer" = [])),
    responses(AuthErrors,
        (status = 200, body = CustomerView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn top_up(_: Operator, State(pool): State<PgPool>, Path(id): Path<Uuid>, Json(req): Json<TopUp>) -> ApiResult<Json<CustomerView>> {
    let amount = req.amount_minor;
    if !(1..=limits::MAX_BALANCE_MINOR).contains(&amount) {
        return Err(ApiError::Unprocessable(format!("amount_minor must be between 1 and {}, not {amount}", limits::MAX_BALANCE_MINOR)));
    }
    let mut tx = pool.begin().await?;
    // Locked, so that the limit checked here is the one the update sees.
    let customer = repo::lock_customer(&mut tx, id).await?.ok_or_else(|| customer_not_found(id))?;
    if customer.balance_minor.checked_add(amount).is_none_or(|b| b > limits::MAX_BALANCE_MINOR) {
        return Err(ApiError::Unprocessable(format!(
            "a top-up of {amount} would take the balance from {} past the limit of {}",
            customer.balance_minor,
            limits::MAX_BALANCE_MINOR
        )));
    }
    let row = repo::top_up(&mut tx, id, amount).await?;
    tx.commit().await?;
    tracing::info!(customer_id = %id, amount_minor = amount, balance_minor = row.balance_minor, "balance topped up");
    Ok(Json(row.into()))
}

/// The payments of an order: none yet, or the one that captured or declined it (refunded
/// since, if the coordinator gave it back). The
/// order's customer sees them, and operators.
#[utoipa::path(get, path = "/orders/{order_id}/payments", tag = "payments", params(("order_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Vec<PaymentView>), (status = 400, body = Problem, content_type = "application/problem+json"), AuthErrors))]
async fn order_payments(caller: Caller, State(pool): State<PgPool>, Path(order_id): Path<Uuid>) -> ApiResult<Json<Vec<PaymentView>>> {
    let mut conn = pool.acquire().await?;
    let rows = repo::payments_of_order(&mut conn, order_id).await?;
    for row in &rows {
        caller.require_customer(row.customer_id)?;
    }
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

fn customer_not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no customer with id {id}"))
}
