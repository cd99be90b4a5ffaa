//! `/admin/faults`: the service's fault flags (see [`crate::faults`]), read and switched by
//! operators while the service runs. Services with flags merge [`router`] into their API.

use std::collections::BTreeMap;

use axum::Extension;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::openapi::{Content, OpenApi, RefOr, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiResult, Json};
use crate::auth::{AuthErrors, Operator};
use crate::faults::{self, Faults, Flag};

/// The routes, reading and writing the flags of `faults` (and refreshing its copy at once,
/// so this process's gauge follows a change without waiting for the next refresh).
pub fn router<S>(faults: Faults) -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let flags = faults.flags();
    let mut router = OpenApiRouter::new().routes(routes!(get_faults, set_faults, clear_faults)).layer(Extension(faults));
    describe(router.get_openapi_mut(), flags);
    router
}

/// Puts the service's own flags (name, meaning, range) into the document, in place of the
/// routes' generic "object of numbers": the answers hold every flag, a PATCH some of them.
fn describe(doc: &mut OpenApi, flags: &[Flag]) {
    let object = |all_required: bool| {
        let mut object = ObjectBuilder::new().additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
        for flag in flags {
            let kind = if flag.integer { Type::Integer } else { Type::Number };
            let value = ObjectBuilder::new().schema_type(kind).minimum(Some(flag.min)).maximum(Some(flag.max)).description(Some(flag.description));
            object = object.property(flag.name, value);
            if all_required {
                object = object.required(flag.name);
            }
        }
        if !all_required {
            object = object.min_properties(Some(1));
        }
        RefOr::T(Schema::Object(object.build()))
    };
    let Some(item) = doc.paths.paths.get_mut("/admin/faults") else { return };
    for op in [&mut item.get, &mut item.patch, &mut item.delete].into_iter().flatten() {
        if let Some(RefOr::T(Response { content, .. })) = op.responses.responses.get_mut("200") {
            content.insert("application/json".to_owned(), RefOr::T(Content::new(Some(object(true)))));
        }
        if let Some(RefOr::T(body)) = &mut op.request_body {
            body.content.insert("application/json".to_owned(), RefOr::T(Content::new(Some(object(false)))));
        }
    }
}

/// Every flag of the service with its value (0 is off).
type Values = BTreeMap<&'static str, f64>;

async fn current(faults: &Faults) -> ApiResult<Json<Values>> {
    Ok(Json(faults.refresh().await?))
}

/// The service's fault flags and their current values (0: off). docs/faults.md says what
/// each one does.
#[utoipa::path(get, path = "/admin/faults", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "every flag of the service and its value", body = BTreeMap<String, f64>), AuthErrors))]
async fn get_faults(_: Operator, Extension(faults): Extension<Faults>) -> ApiResult<Json<Values>> {
    current(&faults).await
}

/// Sets some of the service's fault flags (the others keep their values); every process of
/// the service follows within about a second. Answers with every flag after the change.
#[utoipa::path(patch, path = "/admin/faults", tag = "admin", security(("bearer" = [])),
    request_body(content = BTreeMap<String, f64>, description = "flag name → new value, e.g. `{\"decline_rate\": 0.3}`"),
    responses(
        (status = 200, description = "every flag of the service and its value", body = BTreeMap<String, f64>),
        (status = 400, description = "an unknown flag, a value that is not a number, or one out of the flag's range", content_type = "application/problem+json", body = crate::http::Problem),
        AuthErrors))]
async fn set_faults(
    _: Operator,
    Extension(faults): Extension<Faults>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> ApiResult<Json<Values>> {
    let changes = faults::parse_changes(faults.flags(), &body).map_err(ApiError::BadRequest)?;
    faults::write(faults.pool(), &changes).await?;
    let set: Vec<(&str, f64)> = changes.iter().map(|(f, v)| (f.name, *v)).collect();
    tracing::warn!(?set, "fault flags set by an operator");
    current(&faults).await
}

/// Switches every fault flag of the service off (back to 0).
#[utoipa::path(delete, path = "/admin/faults", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "every flag of the service, now 0", body = BTreeMap<String, f64>), AuthErrors))]
async fn clear_faults(_: Operator, Extension(faults): Extension<Faults>) -> ApiResult<Json<Values>> {
    faults::clear(faults.pool(), faults.flags()).await?;
    tracing::info!("fault flags cleared by an operator");
    current(&faults).await
}
