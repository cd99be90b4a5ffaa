//! What `/openapi.json` says about what the shared plumbing refuses, in one place: the
//! answers every operation may give besides its own (the extractors of `extract.rs`, the
//! body limit, `conn.rs`, the token check), that every error is an
//! `application/problem+json` [`Problem`], and that a request body's objects take no
//! field they do not declare, at any depth (`strict.rs`). A route documents its own errors
//! (`404`, `409`, a `422` with its rules); this adds what it would otherwise forget, and
//! never replaces what a route says.

use std::collections::BTreeSet;

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, Schema};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};
use utoipa::{PartialSchema, ToSchema};

use super::{PROBLEM_JSON, Problem};

/// Adds the shared answers to every operation of `doc`, and the problem body to every
/// error a route listed without one.
pub(super) fn document(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.schemas.entry(Problem::name().into_owned()).or_insert_with(Problem::schema);
    let mut bodies = Vec::new();
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            shared_answers(op);
            if let Some(RefOr::T(body)) = &mut op.request_body {
                for content in body.content.values_mut() {
                    if let RefOr::T(Content { schema: Some(schema), .. }) = content {
                        close(schema, &mut bodies);
                    }
                }
            }
        }
    }
    let mut closed = BTreeSet::new();
    while let Some(name) = bodies.pop() {
        if closed.insert(name.clone())
            && let Some(schema) = components.schemas.get_mut(&name)
        {
            close(schema, &mut bodies);
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.options, &mut item.head, &mut item.patch, &mut item.trace].into_iter().flatten()
}

/// Marks the objects of a request body's `schema` `additionalProperties: false`, as the
/// extractor reads them, also those of types shared with responses and events that take
/// unknown fields elsewhere (`Money`); the components it refers to go on `refs`. Not
/// through `allOf`, whose parts must stay open to be combined.
fn close(schema: &mut RefOr<Schema>, refs: &mut Vec<String>) {
    match schema {
        RefOr::Ref(r) => refs.extend(r.ref_location.strip_prefix("#/components/schemas/").map(str::to_owned)),
        RefOr::T(Schema::Object(object)) => {
            if !object.properties.is_empty() && object.additional_properties.is_none() {
                object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
            object.properties.values_mut().for_each(|p| close(p, refs));
        }
        RefOr::T(Schema::Array(array)) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                close(items, refs);
            }
        }
        RefOr::T(Schema::OneOf(one)) => one.items.iter_mut().for_each(|s| close(s, refs)),
        RefOr::T(Schema::AnyOf(any)) => any.items.iter_mut().for_each(|s| close(s, refs)),
        _ => {}
    }
}

fn shared_answers(op: &mut Operation) {
    // Anything may be malformed: a header hyper refuses (a control character), a path or
    // query value that does not parse or holds a control character, a body that is not JSON.
    add(op, "400", "the request cannot be read: a malformed header, path or query parameter, a control character in any of them or in a JSON string, or a body that is not JSON");
    if op.request_body.is_some() {
        add(op, "413", "the body is larger than this service accepts");
        add(op, "415", "the body is not sent as `Content-Type: application/json`");
        add(op, "422", "the body does not match its schema (a wrong type, a missing or unknown field at any depth, an array for an object) or breaks a rule");
    }
    if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
        add(op, "401", "no bearer token, or one that is not valid; `WWW-Authenticate` says why");
        add(op, "403", "the token is valid but does not allow this");
    }
    for (status, response) in op.responses.responses.iter_mut() {
        if let (true, RefOr::T(response)) = (status.starts_with('4') || status.starts_with('5'), response)
            && response.content.is_empty()
        {
            response.content.insert(PROBLEM_JSON.to_owned(), problem_content());
        }
    }
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses.responses.entry(status.to_owned()).or_insert_with(|| {
        let mut response = Response::new(description);
        response.content.insert(PROBLEM_JSON.to_owned(), problem_content());
        RefOr::T(response)
    });
}

fn problem_content() -> RefOr<Content> {
    RefOr::T(Content::new(Some(Ref::from_schema_name(Problem::name()))))
}
