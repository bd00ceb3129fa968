//! Every local reply edge-guard sends: one JSON error shape, built here only.
//!
//! `{"error": {"code": "...", "message": "...", "request_id": "..."}}` with
//! `content-type: application/json`. Owns the status code of each error code
//! (a public contract). Never sends anything itself: the host layer does.

use crate::json;

/// The documented error codes and their HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    RouteNotFound,
    MethodNotAllowed,
    RequestTimeout,
    UpstreamTimeout,
    WebSocketCapacity,
    WebSocketUserLimit,
    IdentityRequired,
    RouteMismatch,
    UpstreamUnhealthy,
    InvalidPath,
    InvalidUpgrade,
    TransportNotAllowed,
    EngineIoBadRequest,
    DestinationNotAllowed,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::WebSocketCapacity => "websocket_capacity",
            ErrorCode::WebSocketUserLimit => "websocket_user_limit",
            ErrorCode::IdentityRequired => "identity_required",
            ErrorCode::RouteMismatch => "route_mismatch",
            ErrorCode::UpstreamUnhealthy => "upstream_unhealthy",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::InvalidUpgrade => "invalid_upgrade",
            ErrorCode::TransportNotAllowed => "transport_not_allowed",
            ErrorCode::EngineIoBadRequest => "engine_io_bad_request",
            ErrorCode::DestinationNotAllowed => "destination_not_allowed",
        }
    }

    pub fn status(self) -> u32 {
        match self {
            ErrorCode::RouteNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::UpstreamTimeout => 504,
            ErrorCode::WebSocketCapacity => 503,
            ErrorCode::WebSocketUserLimit => 429,
            ErrorCode::IdentityRequired => 401,
            ErrorCode::RouteMismatch => 502,
            ErrorCode::UpstreamUnhealthy => 503,
            ErrorCode::InvalidPath => 400,
            ErrorCode::InvalidUpgrade => 400,
            ErrorCode::TransportNotAllowed | ErrorCode::EngineIoBadRequest => 400,
            ErrorCode::DestinationNotAllowed => 403,
        }
    }
}

/// A complete local reply, ready for `send_http_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl LocalReply {
    /// The error reply for `code`. `request_id` is the client's `x-request-id`.
    pub fn error(code: ErrorCode, message: &str, request_id: Option<&str>) -> LocalReply {
        LocalReply {
            status: code.status(),
            headers: vec![("content-type", "application/json".to_string())],
            body: error_body(code, message, request_id),
        }
    }

    /// A successful JSON document (the status endpoint).
    pub fn json(body: String) -> LocalReply {
        LocalReply {
            status: 200,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> LocalReply {
        self.headers.push((name, value));
        self
    }
}

/// The JSON body of an error; also used to replace Envoy's own plain-text
/// 504 when the router's timeout fires. A missing or empty request id is
/// `null`, never `""`.
pub fn error_body(code: ErrorCode, message: &str, request_id: Option<&str>) -> String {
    json::object(|o| {
        o.obj("error", |e| {
            e.str("code", code.as_str()).str("message", message);
            match request_id.filter(|id| !id.is_empty()) {
                Some(id) => e.str("request_id", id),
                None => e.null("request_id"),
            };
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_documented_shape() {
        let body = error_body(ErrorCode::RouteNotFound, "no route for \"/x\"", Some("abc"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "route_not_found");
        assert_eq!(v["error"]["message"], "no route for \"/x\"");
        assert_eq!(v["error"]["request_id"], "abc");
    }

    #[test]
    fn missing_or_empty_request_id_is_null() {
        for id in [None, Some("")] {
            let v: serde_json::Value =
                serde_json::from_str(&error_body(ErrorCode::UpstreamTimeout, "m", id)).unwrap();
            assert!(v["error"]["request_id"].is_null(), "{v}");
        }
    }

    #[test]
    fn statuses_are_the_contract() {
        let expected = [
            (ErrorCode::RouteNotFound, 404),
            (ErrorCode::MethodNotAllowed, 405),
            (ErrorCode::RequestTimeout, 408),
            (ErrorCode::UpstreamTimeout, 504),
            (ErrorCode::WebSocketCapacity, 503),
            (ErrorCode::WebSocketUserLimit, 429),
            (ErrorCode::IdentityRequired, 401),
            (ErrorCode::RouteMismatch, 502),
            (ErrorCode::UpstreamUnhealthy, 503),
            (ErrorCode::InvalidPath, 400),
            (ErrorCode::InvalidUpgrade, 400),
            (ErrorCode::TransportNotAllowed, 400),
            (ErrorCode::EngineIoBadRequest, 400),
            (ErrorCode::DestinationNotAllowed, 403),
        ];
        for (code, status) in expected {
            assert_eq!(code.status(), status, "{}", code.as_str());
        }
    }

    #[test]
    fn reply_is_json() {
        let reply = LocalReply::error(ErrorCode::MethodNotAllowed, "m", None)
            .with_header("allow", "GET".into());
        assert_eq!(reply.status, 405);
        assert!(reply
            .headers
            .contains(&("content-type", "application/json".into())));
        assert!(reply.headers.contains(&("allow", "GET".into())));
    }
}
