//! host-vmm/openapi.yaml against the code: the same routes both ways, every request
//! example accepted by [`ApiRequest::parse`] (the server's own path from bytes to a
//! request), every answer example read by its response type, every `$ref` resolvable.

use super::ApiRequest;
use super::routes::{Endpoint, PREFIX, ROUTES};
use super::types::{MigrationProgress, NicAnswer, VfStatus, VmCounters, VmInfo, VmmPingResponse};
use serde_json::Value;
use std::collections::BTreeSet;

const SPEC: &str = include_str!("../../openapi.yaml");

fn spec() -> Value {
    // Response codes must be quoted ("200"): JSON, and so this test, has string keys only.
    serde_norway::from_str(SPEC).unwrap_or_else(|e| panic!("openapi.yaml: {e}"))
}

/// The endpoints that answer 200 with a body, and the type that reads it.
fn read_answer(endpoint: Endpoint, example: &Value) -> Result<(), String> {
    fn read<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
        serde_json::from_value::<T>(v.clone())
            .map(drop)
            .map_err(|e| e.to_string())
    }
    match endpoint {
        Endpoint::VmmPing => read::<VmmPingResponse>(example),
        Endpoint::VmInfo => read::<VmInfo>(example),
        Endpoint::VmCounters => read::<VmCounters>(example),
        Endpoint::VmMigrationProgress => read::<MigrationProgress>(example),
        Endpoint::RoamNic => read::<NicAnswer>(example),
        Endpoint::RoamVf => read::<VfStatus>(example),
        _ => Err("this endpoint answers 204, not 200 with a body".into()),
    }
}

fn answers_json(endpoint: Endpoint) -> bool {
    read_answer(endpoint, &Value::Null)
        != Err("this endpoint answers 204, not 200 with a body".into())
}

/// The examples of a media type: `example` and every `examples.*.value`.
fn examples(media: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    if let Some(e) = media.get("example") {
        out.push(("example".to_owned(), e.clone()));
    }
    if let Some(map) = media.get("examples").and_then(Value::as_object) {
        for (name, e) in map {
            match e.get("value") {
                Some(v) => out.push((format!("examples.{name}"), v.clone())),
                None => out.push((format!("examples.{name} (no value)"), Value::Null)),
            }
        }
    }
    out
}

/// Every `$ref` in `v` that does not point at something in `root`.
fn dangling_refs(root: &Value, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "$ref" {
                    let target = child.as_str().unwrap_or("");
                    let found = target
                        .strip_prefix('#')
                        .and_then(|pointer| root.pointer(pointer))
                        .is_some();
                    if !found {
                        out.push(format!("$ref `{target}` points at nothing"));
                    }
                } else {
                    dangling_refs(root, child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| dangling_refs(root, i, out)),
        _ => {}
    }
}

/// Everything in `spec` that disagrees with the code, in words.
fn problems(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let base = spec
        .pointer("/servers/0/url")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !base.ends_with(PREFIX.trim_end_matches('/')) {
        out.push(format!("servers[0].url `{base}` does not end in /api/v1"));
    }
    let mut in_spec = BTreeSet::new();
    let empty = serde_json::Map::new();
    let paths = spec
        .get("paths")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (path, item) in paths {
        let full = format!("{}{}", PREFIX.trim_end_matches('/'), path);
        for (method, op) in item.as_object().unwrap_or(&empty) {
            let method = method.to_ascii_uppercase();
            in_spec.insert((method.clone(), full.clone()));
            let here = format!("{method} {path}");
            let Some(route) = ROUTES
                .iter()
                .find(|r| r.path == full && r.method.as_str() == method)
            else {
                out.push(format!("{here} is in openapi.yaml but not in ROUTES"));
                continue;
            };
            check_operation(&here, route.endpoint, op, &mut out);
        }
    }
    for r in ROUTES {
        if !in_spec.contains(&(r.method.as_str().to_owned(), r.path.to_owned())) {
            out.push(format!(
                "{} {} is in ROUTES but not in openapi.yaml",
                r.method, r.path
            ));
        }
    }
    dangling_refs(spec, spec, &mut out);
    out
}

fn check_operation(here: &str, endpoint: Endpoint, op: &Value, out: &mut Vec<String>) {
    // The request body: there exactly when the endpoint takes one, each example parsed
    // by the server's own function.
    match op.get("requestBody") {
        None if endpoint.takes_body() => out.push(format!("{here}: no requestBody")),
        None => {}
        Some(_) if !endpoint.takes_body() => {
            out.push(format!(
                "{here}: a requestBody, but the endpoint takes none"
            ));
        }
        Some(body) => {
            if body.get("required") != Some(&Value::Bool(true)) {
                out.push(format!("{here}: requestBody is not `required: true`"));
            }
            let media = body.pointer("/content/application~1json");
            if media.and_then(|m| m.get("schema")).is_none() {
                out.push(format!(
                    "{here}: requestBody has no application/json schema"
                ));
            }
            let examples = media.map(examples).unwrap_or_default();
            if examples.is_empty() {
                out.push(format!("{here}: requestBody has no example"));
            }
            for (name, example) in examples {
                let bytes = serde_json::to_vec(&example).unwrap_or_default();
                match ApiRequest::parse(endpoint, Some(&bytes)) {
                    Ok(r) if r.endpoint() == endpoint => {}
                    Ok(r) => out.push(format!("{here}: {name} parsed as {:?}", r.endpoint())),
                    Err(e) => out.push(format!("{here}: request {name} is refused: {e}")),
                }
            }
        }
    }
    // The answers: 200 with a body where the backend answers one, else 204; and the
    // error answer.
    let responses = op.get("responses");
    let (ok, not_ok) = if answers_json(endpoint) {
        ("200", "204")
    } else {
        ("204", "200")
    };
    if responses.and_then(|r| r.get(not_ok)).is_some() {
        out.push(format!(
            "{here}: documents {not_ok}; the endpoint answers {ok}"
        ));
    }
    match responses.and_then(|r| r.get(ok)) {
        None => out.push(format!("{here}: no {ok} response")),
        Some(success) if ok == "200" => {
            let media = success.pointer("/content/application~1json");
            if media.and_then(|m| m.get("schema")).is_none() {
                out.push(format!("{here}: 200 has no application/json schema"));
            }
            let examples = media.map(examples).unwrap_or_default();
            if examples.is_empty() {
                out.push(format!("{here}: 200 has no example"));
            }
            for (name, example) in examples {
                if let Err(e) = read_answer(endpoint, &example) {
                    out.push(format!("{here}: 200 {name} does not read: {e}"));
                }
            }
        }
        Some(_) => {}
    }
    let error_ref = responses
        .and_then(|r| r.pointer("/default/$ref"))
        .and_then(Value::as_str);
    if error_ref != Some("#/components/responses/Error") {
        out.push(format!(
            "{here}: `default` is not $ref #/components/responses/Error"
        ));
    }
}

#[test]
fn openapi_yaml_agrees_with_the_router_and_the_request_parser() {
    let problems = problems(&spec());
    assert!(
        problems.is_empty(),
        "openapi.yaml and the code disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_error_schema_is_what_the_server_sends() {
    let spec = spec();
    let example = spec
        .pointer("/components/responses/Error/content/application~1json/example")
        .unwrap();
    let body = super::http::Response::error(400, "x").body;
    let sent: Value = serde_json::from_slice(&body).unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(example), keys(&sent));
    assert_eq!(
        spec.pointer("/components/schemas/Error/required/0"),
        Some(&Value::from("error"))
    );
}

#[test]
fn the_check_catches_each_kind_of_disagreement() {
    let mut spec = spec();
    let paths = spec["paths"].as_object_mut().unwrap();
    // A route the code lacks, a route the spec lacks, a wrong method.
    paths.insert("/vm.reboot".into(), serde_json::json!({"put": {}}));
    paths.remove("/vm.delete");
    let info = paths.remove("/vm.info").unwrap();
    paths.insert("/vm.info".into(), serde_json::json!({ "put": info["get"] }));
    // A request example the parser refuses, and an answer example that does not read.
    spec["paths"]["/roam.vf"]["put"]["requestBody"]["content"]["application/json"]["example"] =
        serde_json::json!({"action": "unplug"});
    spec["paths"]["/vmm.ping"]["get"]["responses"]["200"]["content"]["application/json"]["example"] =
        serde_json::json!({"version": 1});
    spec["components"]["schemas"]
        .as_object_mut()
        .unwrap()
        .remove("VfStatus");
    let found = problems(&spec).join("\n");
    for needle in [
        "PUT /vm.reboot is in openapi.yaml but not in ROUTES",
        "PUT /api/v1/vm.delete is in ROUTES but not in openapi.yaml",
        "PUT /vm.info is in openapi.yaml but not in ROUTES",
        "GET /api/v1/vm.info is in ROUTES but not in openapi.yaml",
        "PUT /roam.vf: request example is refused: invalid roam.vf body: `action`: unknown variant `unplug`",
        "GET /vmm.ping: 200 example does not read",
        "$ref `#/components/schemas/VfStatus` points at nothing",
    ] {
        assert!(found.contains(needle), "`{needle}` not found in:\n{found}");
    }
}
