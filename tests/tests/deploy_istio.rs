//! deploy/istio/wasmplugin.yaml through real Envoy in the shape Istio gives
//! it: the manifest's own `pluginConfig` as the policy (its Istio cluster
//! names included) behind a jwt_authn filter configured as istiod generates
//! it for a RequestAuthentication (provider `origins-0`, the payload in
//! metadata under `payload`, `allow_missing`, CORS preflight bypass), with a
//! real signed token checked against a local JWKS.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edge_guard_e2e::tools::read_repo_file;
use edge_guard_e2e::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The upgrade's refusal; panics if it was accepted.
fn refused(envoy: &Envoy, headers: &[(&str, &str)], what: &str) -> UpgradeRejected {
    match envoy.websocket("/ws/events", headers) {
        Ok(_) => panic!("{what}: the upgrade was accepted"),
        Err(r) => r,
    }
}

const SECRET: &[u8] = b"edge-guard-istio-hs256-secret-0123456789";
const ISSUER: &str = "https://issuer.platform.example";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    let header = b64(br#"{"alg":"HS256","typ":"JWT","kid":"edge"}"#);
    let claims = b64(
        json!({"iss": ISSUER, "sub": sub, "exp": exp, "scope": "events:read events:write"})
            .to_string()
            .as_bytes(),
    );
    let input = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("hmac key");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

/// The jwt_authn filter as istiod generates it for one RequestAuthentication
/// jwtRule (pilot's authn policy applier), with the JWKS inlined.
fn istio_jwt_authn() -> String {
    let jwks = json!({"keys": [{"kty": "oct", "alg": "HS256", "kid": "edge", "k": b64(SECRET)}]})
        .to_string();
    format!(
        r#"
name: envoy.filters.http.jwt_authn
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
  providers:
    origins-0:
      issuer: "{ISSUER}"
      local_jwks: {{inline_string: {}}}
      payload_in_metadata: payload
      normalize_payload_in_metadata: {{space_delimited_claims: [permission, scope]}}
  rules:
  - match: {{prefix: /}}
    requires:
      requires_any:
        requirements:
        - provider_name: origins-0
        - allow_missing: {{}}
  bypass_cors_preflight: true
"#,
        serde_json::to_string(&jwks).expect("jwks")
    )
}

/// The WasmPlugin's `pluginConfig`, as JSON.
fn manifest_policy() -> Value {
    let text = read_repo_file("deploy/istio/wasmplugin.yaml");
    let doc: serde_norway::Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("wasmplugin.yaml: {e}"));
    let json = serde_json::to_value(doc).expect("yaml as json");
    json["spec"]["pluginConfig"].clone()
}

fn stack(policy: &Value) -> (Upstream, Upstream, Envoy) {
    let route = |name: &str| {
        policy["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == name))
            .and_then(|r| r["cluster"].as_str())
            .unwrap_or_else(|| panic!("no route {name} in the manifest's pluginConfig"))
            .to_string()
    };
    let events = Upstream::start("event_service");
    let courses = Upstream::start("course_service");
    let envoy = Envoy::builder(policy)
        .upstream_as(&events, &route("events"))
        .upstream_as(&courses, &route("courses"))
        .http_filter_yaml(&istio_jwt_authn())
        .start();
    (events, courses, envoy)
}

#[test]
fn istio_manifest_admits_a_websocket_with_a_verified_token_and_counts_its_subject() {
    let policy = manifest_policy();
    assert_eq!(
        policy["websocket"]["identity"]["jwt"]["payload_key"], "payload",
        "Istio's jwt_authn writes the payload under `payload`"
    );
    let (_events, _courses, envoy) = stack(&policy);
    let limit = policy["websocket"]["max_connections_per_user"]
        .as_u64()
        .expect("the manifest sets max_connections_per_user") as usize;
    let bearer = format!("Bearer {}", token("alice"));

    let mut open = Vec::new();
    for i in 0..limit {
        let mut ws = envoy
            .websocket("/ws/events", &[("authorization", &bearer)])
            .unwrap_or_else(|r| panic!("alice's upgrade {i} with a verified token refused: {r:?}"));
        ws.send_text("hi");
        open.push(ws);
    }
    // The subject is counted: alice's next one is over her limit, even when
    // she claims another user in a header.
    let r = refused(
        &envoy,
        &[("authorization", &bearer), ("x-user-id", "bob")],
        "alice over her per-user limit",
    );
    assert_eq!(r.status, 429, "{r:?}");
    // Another subject is admitted.
    let bob = format!("Bearer {}", token("bob"));
    let _bob = envoy
        .websocket("/ws/events", &[("authorization", &bob)])
        .unwrap_or_else(|r| panic!("bob refused: {r:?}"));
    // No token (allow_missing lets it through jwt_authn): edge-guard requires identity.
    let r = refused(&envoy, &[("x-user-id", "alice")], "no token");
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn the_old_payload_key_refuses_every_websocket_under_istio() {
    // The bug the manifest had: `jwt_payload` is not where Istio puts the payload.
    let mut policy = manifest_policy();
    policy["websocket"]["identity"]["jwt"]["payload_key"] = json!("jwt_payload");
    let (_events, _courses, envoy) = stack(&policy);
    let bearer = format!("Bearer {}", token("alice"));
    let r = refused(
        &envoy,
        &[("authorization", &bearer)],
        "with the wrong key no identity is found",
    );
    assert_eq!(r.status, 401, "{r:?}");
}
