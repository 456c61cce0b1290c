//! The rules of a test spec as JSON Schema, for the orchestrator's `/openapi.json`.
//!
//! utoipa derives the spec's shape (field names, types, which are optional) from the Rust
//! types; this module adds what [`TestSpec::validate`](crate::TestSpec::validate) checks
//! beyond the shape: ranges, lengths, patterns, and how fields go together (a target URL
//! *or* a mix; Tsunami paced by exactly one of `delay_ms`, `rate`, `stages`; …). The
//! numbers come from the same constants the validation uses, so the document cannot drift
//! from the code, and a schema-driven fuzzer (schemathesis, in `make test`) finds every
//! schema-valid spec accepted and every schema-invalid one refused.
//!
//! Two rules are stricter here than in the code, on purpose, because JSON Schema cannot
//! say them: threshold texts match a canonical subset of what the parser reads (the
//! parser also takes `avg`, `median`, `p99.9`, any spacing and case, and a request name in
//! braces, which must name a request of the mix), and URLs match a plain subset of
//! `http(s)` URLs. A mix's request names must also be unique, which JSON Schema cannot
//! express for one property of array items.

use serde_json::{Value, json};

use crate::spec::{
    MAX_ABORT_GRACE_S, MAX_BODY_BYTES, MAX_CONCURRENCY, MAX_DELAY_MS, MAX_DRIVERS, MAX_DURATION_S,
    MAX_MIX, MAX_NAME_CHARS, MAX_RATE, MAX_REQUEST_NAME_CHARS, MAX_REQUESTS_PER_DRIVER,
    MAX_SECRET_HEADERS, MAX_STAGES, MAX_TIMEOUT_MS, MAX_URL_CHARS, MIN_PROFILE_VALUE,
};

/// An HTTP token (RFC 9110 §5.6.2): what a method and a header name are made of.
pub const TOKEN_PATTERN: &str = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

/// A header value the HTTP layer takes: no control characters but tab.
pub const HEADER_VALUE_PATTERN: &str = r"^[^\x00-\x08\x0a-\x1f\x7f]*$";

/// A mix request's name: 1 to 64 characters, no braces or angle brackets (they delimit
/// names in thresholds and reports), no control characters, no surrounding spaces.
pub const REQUEST_NAME_PATTERN: &str =
    r"^[^{}<>\s\x00-\x1f\x7f-\x9f]([^{}<>\x00-\x1f\x7f-\x9f]*[^{}<>\s\x00-\x1f\x7f-\x9f])?$";

/// The documented (canonical) form of a threshold.
pub const THRESHOLD_PATTERN: &str = concat!(
    r"^((min|mean|p50|p90|p95|p99|p999|max) (<|<=|>|>=) [0-9]{1,7}(\.[0-9]{1,3})?(us|ms|s)?",
    r"|error_rate (<|<=|>|>=) ([0-9]{1,3}(\.[0-9]{1,3})?%|0(\.[0-9]{1,6})?|1)",
    r"|(rps|requests|errors) (<|<=|>|>=) [0-9]{1,12})( abort)?$"
);

/// The form of a target URL, as the code checks it (`spec::plain_url_form`): `http://` or
/// `https://`, a host name (labels of letters, digits, `-`, `_` between dots) or a
/// bracketed IPv6 address (RFC 3986's grammar), an optional port from 0 to 65535, a path
/// of RFC 3986 path characters and an optional query. Forbidden addresses (link-local,
/// metadata services, this orchestrator's own) are refused beyond this form.
pub const URL_PATTERN: &str = concat!(
    r"^https?://([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*|\[",
    r"(([0-9A-Fa-f]{1,4}:){6}([0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})|::([0-9A-Fa-f]{1,4}:){5}([0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})|([0-9A-Fa-f]{1,4})?::([0-9A-Fa-f]{1,4}:){4}([0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})|(([0-9A-Fa-f]{1,4}:){0,1}[0-9A-Fa-f]{1,4})?::([0-9A-Fa-f]{1,4}:){3}([0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})|(([0-9A-Fa-f]{1,4}:){0,2}[0-9A-Fa-f]{1,4})?::([0-9A-Fa-f]{1,4}:){2}([0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})|(([0-9A-Fa-f]{1,4}:){0,3}[0-9A-Fa-f]{1,4})?::[0-9A-Fa-f]{1,4}:([0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})|(([0-9A-Fa-f]{1,4}:){0,4}[0-9A-Fa-f]{1,4})?::([0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})|(([0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4})?::[0-9A-Fa-f]{1,4}|(([0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4})?::)",
    r"\])(:(0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*(\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$"
);

/// `field` is given and is not `null`.
fn given(field: &str) -> Value {
    json!({ "required": [field], "properties": { field: { "not": { "type": "null" } } } })
}

/// `field` is absent or `null`.
fn absent(field: &str) -> Value {
    json!({ "properties": { field: { "type": "null" } } })
}

/// A profile value (stage target, start target): 0, or at least [`MIN_PROFILE_VALUE`] and
/// at most `cap`.
fn profile_value(cap: f64) -> Value {
    json!({ "anyOf": [
        { "const": 0 },
        { "type": "number", "minimum": MIN_PROFILE_VALUE, "maximum": cap }
    ] })
}

/// A map of header names to values.
fn headers() -> Value {
    json!({
        "type": "object",
        "propertyNames": { "pattern": TOKEN_PATTERN },
        "additionalProperties": { "type": "string", "pattern": HEADER_VALUE_PATTERN }
    })
}

/// The per-field rules of [`crate::TestSpec`], merged into its derived properties.
fn spec_properties() -> Value {
    json!({
        "name": { "type": ["string", "null"], "maxLength": MAX_NAME_CHARS },
        "target_url": { "type": ["string", "null"], "pattern": URL_PATTERN, "maxLength": MAX_URL_CHARS },
        "requests": {
            "type": ["array", "null"], "minItems": 1, "maxItems": MAX_MIX,
            // At least one request has a positive weight (absent means 1).
            "contains": { "anyOf": [
                { "not": { "required": ["weight"] } },
                { "properties": { "weight": { "exclusiveMinimum": 0 } } }
            ] }
        },
        "drivers": { "type": "integer", "minimum": 1, "maximum": MAX_DRIVERS },
        "requests_per_driver": {
            "type": ["integer", "null"], "minimum": 1, "maximum": MAX_REQUESTS_PER_DRIVER
        },
        "duration_s": {
            "type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_DURATION_S
        },
        "concurrency": { "type": ["integer", "null"], "minimum": 1, "maximum": MAX_CONCURRENCY },
        "delay_ms": { "type": ["number", "null"], "minimum": 0, "maximum": MAX_DELAY_MS },
        "rate": { "type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_RATE },
        "stages": { "type": ["array", "null"], "minItems": 1, "maxItems": MAX_STAGES },
        "start_target": {
            "anyOf": [{ "type": "null" }, profile_value(MAX_RATE)]
        },
        "timeout_ms": { "type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS },
        "method": { "type": "string", "pattern": TOKEN_PATTERN },
        "headers": headers(),
        "body": { "type": ["string", "null"], "maxLength": MAX_BODY_BYTES },
        "thresholds": {
            "type": "array",
            "items": { "type": "string", "pattern": THRESHOLD_PATTERN }
        },
        "abort_grace_s": {
            "type": ["number", "null"], "minimum": 0, "maximum": MAX_ABORT_GRACE_S
        },
        "secret_headers": {
            "type": "array", "maxItems": MAX_SECRET_HEADERS,
            "items": { "type": "string", "pattern": TOKEN_PATTERN }
        }
    })
}

/// How the fields of a [`crate::TestSpec`] go together.
fn spec_rules() -> Value {
    let avalanche_cap = f64::from(MAX_CONCURRENCY);
    json!([
        // One target URL, or a mix (whose requests carry their own method and body).
        { "anyOf": [
            { "allOf": [given("target_url"), absent("requests")] },
            { "allOf": [given("requests"), absent("target_url"), absent("body"),
                { "properties": { "method": { "const": "GET" } } }] }
        ] },
        // Bound by a count, a duration, or stages.
        { "anyOf": [given("requests_per_driver"), given("duration_s"), given("stages")] },
        // Stages are the duration.
        { "not": { "allOf": [given("duration_s"), given("stages")] } },
        // start_target is where the first stage ramps from.
        { "anyOf": [given("stages"), absent("start_target")] },
        { "if": { "properties": { "test_type": { "const": "avalanche" } } },
          "then": { "allOf": [
            { "properties": {
                "delay_ms": { "anyOf": [{ "type": "null" }, { "const": 0 }] },
                "rate": { "type": "null" },
                "start_target": { "anyOf": [{ "type": "null" }, { "maximum": avalanche_cap }] },
                "stages": { "anyOf": [{ "type": "null" },
                    { "items": { "properties": { "target": { "maximum": avalanche_cap } } } }] }
            } },
            // Stages give the concurrency.
            { "not": { "allOf": [given("stages"), given("concurrency")] } },
            // Some stage (or the start) holds at least one connection.
            { "anyOf": [
                absent("stages"),
                { "properties": { "start_target": { "type": "number", "minimum": 1 } },
                  "required": ["start_target"] },
                { "properties": { "stages": {
                    "contains": { "properties": { "target": { "type": "number", "minimum": 1 } } } } } }
            ] }
          ] } },
        { "if": { "properties": { "test_type": { "const": "tsunami" } } },
          "then": { "allOf": [
            // Paced by exactly one of them.
            { "oneOf": [given("delay_ms"), given("rate"), given("stages")] },
            { "properties": {
                "delay_ms": { "anyOf": [{ "type": "null" }, { "exclusiveMinimum": 0 }] }
            } },
            // Stages that plan at least one request.
            { "anyOf": [
                absent("stages"),
                { "properties": { "start_target": { "type": "number", "exclusiveMinimum": 0 } },
                  "required": ["start_target"] },
                { "properties": { "stages": {
                    "contains": { "properties": { "target": { "type": "number", "exclusiveMinimum": 0 } } } } } }
            ] }
          ] } }
    ])
}

/// The rules of [`crate::RequestSpec`].
fn request_properties() -> Value {
    json!({
        "name": { "type": "string", "pattern": REQUEST_NAME_PATTERN,
                  "minLength": 1, "maxLength": MAX_REQUEST_NAME_CHARS },
        "method": { "type": "string", "pattern": TOKEN_PATTERN },
        "url": { "type": "string", "pattern": URL_PATTERN, "maxLength": MAX_URL_CHARS },
        "headers": headers(),
        "body": { "type": ["string", "null"], "maxLength": MAX_BODY_BYTES },
        "weight": { "type": "number", "minimum": 0 }
    })
}

/// The rules of [`crate::Stage`].
fn stage_properties() -> Value {
    json!({
        "duration_s": { "type": "number", "minimum": MIN_PROFILE_VALUE, "maximum": MAX_DURATION_S },
        "target": profile_value(MAX_RATE)
    })
}

/// Merges `rules` into the `properties` of `schema`, key by key: a rule replaces what
/// the derivation said about that key and keeps the rest (descriptions, formats).
fn merge_properties(schema: &mut Value, rules: Value) {
    let (Some(props), Value::Object(rules)) = (
        schema.get_mut("properties").and_then(Value::as_object_mut),
        rules,
    ) else {
        return;
    };
    for (field, rule) in rules {
        let Some(Value::Object(target)) = props.get_mut(&field) else {
            continue;
        };
        if let Value::Object(rule) = rule {
            if rule.contains_key("anyOf") {
                // A choice replaces the derived type (`["number", "null"]`), which would
                // otherwise apply beside it.
                target.remove("type");
                target.remove("minimum");
            }
            for (k, v) in rule {
                target.insert(k, v);
            }
        }
    }
}

/// Adds the spec's rules to an OpenAPI document's `components.schemas` (`TestSpec`,
/// `RequestSpec`, `Stage`, as utoipa names them). Schemas it does not find are left
/// alone.
pub fn tighten(components: &mut Value) {
    if let Some(spec) = components.get_mut("TestSpec") {
        merge_properties(spec, spec_properties());
        if let Some(obj) = spec.as_object_mut() {
            obj.insert("allOf".into(), spec_rules());
        }
    }
    if let Some(request) = components.get_mut("RequestSpec") {
        merge_properties(request, request_properties());
    }
    if let Some(stage) = components.get_mut("Stage") {
        merge_properties(stage, stage_properties());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_agree_with_the_parsers() {
        // Every pattern is checked by schemathesis against the running API; here, that the
        // documented examples of each are what the code takes.
        for t in [
            "p99 < 200ms",
            "error_rate < 1% abort",
            "rps >= 100",
            "max <= 2s",
        ] {
            crate::Threshold::parse(t).unwrap();
        }
        for u in ["http://localhost:8080/ping", "https://a.example/x?y=1"] {
            crate::parse_target_url(u).unwrap();
        }
    }

    #[test]
    fn merges_rules_into_derived_properties() {
        let mut components = json!({
            "TestSpec": { "type": "object", "properties": {
                "drivers": { "type": "integer", "minimum": 0, "description": "d" },
                "start_target": { "type": ["number", "null"], "minimum": 0 }
            } },
            "Stage": { "type": "object", "properties": { "target": { "type": "number" } } }
        });
        tighten(&mut components);
        let drivers = &components["TestSpec"]["properties"]["drivers"];
        assert_eq!(drivers["minimum"], 1);
        assert_eq!(drivers["maximum"], MAX_DRIVERS);
        assert_eq!(drivers["description"], "d");
        let start = &components["TestSpec"]["properties"]["start_target"];
        assert!(start.get("type").is_none(), "{start}");
        assert!(start["anyOf"].is_array());
        assert!(components["TestSpec"]["allOf"].is_array());
        assert!(components["Stage"]["properties"]["target"]["anyOf"].is_array());
    }
}
