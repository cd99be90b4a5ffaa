//! For services' tests (feature `testing`): a freshly migrated database per test and
//! requests driven through the real router, without a socket.

use axum::Router;
use axum::body::Body;
use axum::extract::FromRef;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tower::ServiceExt;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::{DevIssuer, Verifier};

/// A new database (see `conveyor_devpg::test_db`) with the queue schema, the platform's
/// tables and `migrator`'s.
pub async fn migrated_db(migrator: &Migrator) -> PgPool {
    let db = conveyor_devpg::test_db().await;
    let pool = db.pool().await;
    crate::db::migrate_shared(&pool).await.expect("queue schema and platform tables");
    migrator.run(&pool).await.expect("service migrations");
    pool
}

/// A service's API as `serve_api` serves it, for requests without a socket, trusting the
/// tokens of its own [`DevIssuer`]. Requests carry an operator's token unless the API was
/// made to speak as someone else ([`TestApi::as_customer`], [`TestApi::anonymous`]).
#[derive(Clone)]
pub struct TestApi {
    pub router: Router,
    pub issuer: DevIssuer,
    /// The bearer token sent with every request; `None`: none.
    pub token: Option<String>,
}

/// A response: status, headers, and the body parsed as JSON (`Null` when empty or not JSON;
/// the raw text is in `text`).
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: serde_json::Value,
    pub text: String,
}

impl TestResponse {
    pub fn content_type(&self) -> &str {
        self.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// Asserts a problem+json answer with `status` and returns its `detail`.
    #[track_caller]
    pub fn problem(&self, status: u16) -> &str {
        assert_eq!(self.status.as_u16(), status, "expected {status}, got {} {}", self.status, self.text);
        assert_eq!(self.content_type(), crate::http::PROBLEM_JSON, "{}", self.text);
        let detail = self.json["detail"].as_str().expect("problem has a detail");
        assert!(!detail.is_empty());
        detail
    }
}

impl TestApi {
    pub fn new<S>(service: &'static str, pool: PgPool, api: OpenApiRouter<S>, state: S) -> Self
    where
        S: Clone + Send + Sync + 'static,
        PgPool: FromRef<S>,
    {
        let issuer = DevIssuer::generate().expect("a signing key");
        let router = crate::http::with_verifier(crate::http::api_router(service, 64 * 1024, pool, api, state), Verifier::trusting(&issuer));
        let token = Some(issuer.operator());
        TestApi { router, issuer, token }
    }

    /// The same API, called by customer `id`.
    pub fn as_customer(&self, id: uuid::Uuid) -> TestApi {
        TestApi { token: Some(self.issuer.customer(id)), ..self.clone() }
    }

    /// The same API, called by an operator (the default).
    pub fn as_operator(&self) -> TestApi {
        TestApi { token: Some(self.issuer.operator()), ..self.clone() }
    }

    /// The same API, called with no token.
    pub fn anonymous(&self) -> TestApi {
        TestApi { token: None, ..self.clone() }
    }

    /// Sends `body` (raw text, sent as JSON) with extra `headers`.
    pub async fn send(&self, method: Method, uri: &str, headers: &[(&str, &str)], body: Option<&str>) -> TestResponse {
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req = req.header("content-type", "application/json");
        }
        if let Some(token) = &self.token
            && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body.map(|b| Body::from(b.to_owned())).unwrap_or_else(Body::empty)).expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible router");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        TestResponse { status: parts.status, headers: parts.headers, json, text }
    }

    pub async fn get(&self, uri: &str) -> TestResponse {
        self.send(Method::GET, uri, &[], None).await
    }

    pub async fn post(&self, uri: &str, body: serde_json::Value) -> TestResponse {
        self.send(Method::POST, uri, &[], Some(&body.to_string())).await
    }

    pub async fn post_raw(&self, uri: &str, body: &str) -> TestResponse {
        self.send(Method::POST, uri, &[], Some(body)).await
    }

    pub async fn patch(&self, uri: &str, body: serde_json::Value) -> TestResponse {
        self.send(Method::PATCH, uri, &[], Some(&body.to_string())).await
    }

    pub async fn put(&self, uri: &str, body: serde_json::Value) -> TestResponse {
        self.send(Method::PUT, uri, &[], Some(&body.to_string())).await
    }
}

/// Puts `event` into `pool`'s inbox as a relay would, with a fresh message id (returned).
/// Delivering the same id twice is what a repeated relay does: see [`deliver_with_id`].
pub async fn deliver<E: conveyor_queue::Event>(pool: &PgPool, event: &E) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    deliver_with_id(pool, id, event).await;
    id
}

/// Puts `event` into the inbox under message id `id`, exactly as the relay does: a second
/// delivery of the same id is not inserted while the first waits in the inbox (`ON CONFLICT
/// DO NOTHING`), and dropped at its claim once the first is recorded done.
pub async fn deliver_with_id<E: conveyor_queue::Event>(pool: &PgPool, id: uuid::Uuid, event: &E) {
    sqlx::query(
        "INSERT INTO conveyor.inbox (message_id, topic, key, payload, published_at) VALUES ($1, $2, $3, $4, now())
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(E::TOPIC)
    .bind(event.key())
    .bind(sqlx::types::Json(event))
    .execute(pool)
    .await
    .expect("inbox insert");
}

/// Every message waiting in `pool`'s outbox, oldest first: (topic, payload).
pub async fn outbox(pool: &PgPool) -> Vec<(String, serde_json::Value)> {
    sqlx::query_as::<_, (String, sqlx::types::Json<serde_json::Value>)>("SELECT topic, payload FROM conveyor.outbox ORDER BY message_id")
        .fetch_all(pool)
        .await
        .expect("outbox read")
        .into_iter()
        .map(|(t, p)| (t, p.0))
        .collect()
}

/// The inbox state of message `id` (`pending`, `running`, `dead`, or `done` once it is
/// recorded in `conveyor.inbox_done`) and its attempts.
pub async fn inbox_state(pool: &PgPool, id: uuid::Uuid) -> (String, i32) {
    sqlx::query_as(
        "SELECT state, attempts FROM conveyor.inbox WHERE message_id = $1
         UNION ALL SELECT 'done', attempts FROM conveyor.inbox_done WHERE message_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("inbox row")
}

/// Runs `consumer` until a cycle finds nothing deliverable; returns how many messages were
/// settled (handled, retried or declared dead), for tests that drain instead of sleeping.
pub async fn drain(consumer: &conveyor_queue::Consumer) -> usize {
    let mut total = 0;
    loop {
        match consumer.process_once().await.expect("consumer cycle") {
            0 => return total,
            n => total += n,
        }
    }
}

/// Runs `consumers` side by side until `pool`'s inbox is empty (a cycle can come back empty
/// while the others hold the rest, or while a message that lost a race waits out its
/// backoff: a consumer stops only once nothing is left), for at most two minutes; for tests
/// of concurrent consumers.
pub async fn drain_together(pool: &PgPool, consumers: Vec<conveyor_queue::Consumer>) {
    let workers: Vec<_> = consumers
        .into_iter()
        .map(|consumer| {
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    if consumer.process_once().await.expect("consumer cycle") == 0 {
                        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM conveyor.inbox").fetch_one(&pool).await.expect("inbox count");
                        if left == 0 {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(std::time::Duration::from_secs(120), futures::future::try_join_all(workers)).await.expect("consumers finish").expect("consumer task");
}
