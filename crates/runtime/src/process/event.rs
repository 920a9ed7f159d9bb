//! HTTP requests as API Gateway HTTP API (payload 2.0) events, and handler results back into
//! HTTP responses with Lambda's inference rules, so existing Lambda HTTP handlers run as is.
//!
//! The event and result are written and read with our own serde types rather than
//! `aws_lambda_events::apigw`: its request type serializes fields that payload 2.0 does not
//! have (a top-level `httpMethod: "GET"`, `type`, `methodArn` as null, an empty
//! `stageVariables`) and keeps only the first value of a repeated header, and its response
//! type refuses a result without `cookies`. The tests check that its types read our events.

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Facts about the request that are not in the HTTP message.
pub(crate) struct EventContext<'a> {
    /// The invocation's request id (`requestContext.requestId`).
    pub request_id: &'a str,
    /// `"$default"` or `"GET /path"`.
    pub route_key: &'a str,
    /// The client's address, when known.
    pub source_ip: Option<IpAddr>,
    /// When the request arrived.
    pub time: SystemTime,
    /// The host the client asked for (`requestContext.domainName`).
    pub domain: Option<&'a str>,
    /// The stage name, `"$default"`.
    pub stage: &'a str,
}

/// The event, in payload 2.0's field order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpEvent<'a> {
    version: &'static str,
    route_key: &'a str,
    raw_path: &'a str,
    raw_query_string: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cookies: Vec<&'a str>,
    headers: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_string_parameters: Option<BTreeMap<String, String>>,
    request_context: RequestContext<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Cow<'a, str>>,
    is_base64_encoded: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext<'a> {
    account_id: &'static str,
    api_id: &'static str,
    domain_name: &'a str,
    domain_prefix: &'a str,
    http: HttpDescription<'a>,
    request_id: &'a str,
    route_key: &'a str,
    stage: &'a str,
    time: String,
    time_epoch: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpDescription<'a> {
    method: &'a str,
    path: &'a str,
    protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_ip: Option<String>,
    user_agent: Cow<'a, str>,
}

/// The account id events carry: Nubo has no accounts, and clients only pass it through.
const ACCOUNT_ID: &str = "000000000000";

/// The API id events carry.
const API_ID: &str = "nubo";

/// An API Gateway HTTP API payload 2.0 event (JSON bytes) for a request.
pub(crate) fn http_event(
    parts: &http::request::Parts,
    body: &[u8],
    ctx: &EventContext<'_>,
) -> Vec<u8> {
    let mut cookies = Vec::new();
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        if name == header::COOKIE {
            // Lambda splits every cookie header into `cookies` and drops the header itself.
            if let Ok(value) = value.to_str() {
                cookies.extend(value.split(';').map(str::trim).filter(|c| !c.is_empty()));
            }
            continue;
        }
        // Names in a `HeaderMap` are lower case already.
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let raw_path = parts.uri.path();
    let raw_query = parts.uri.query().unwrap_or("");
    let domain = ctx
        .domain
        .or_else(|| parts.uri.host())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("localhost");
    let domain_prefix = domain.split(['.', ':']).next().unwrap_or(domain);
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .map_or(Cow::Borrowed(""), |v| String::from_utf8_lossy(v.as_bytes()));
    let (body, is_base64_encoded) = encode_body(body, parts.headers.get(header::CONTENT_TYPE));
    let since_epoch = ctx.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let event = HttpEvent {
        version: "2.0",
        route_key: ctx.route_key,
        raw_path,
        raw_query_string: raw_query,
        cookies,
        headers,
        query_string_parameters: query_parameters(raw_query),
        request_context: RequestContext {
            account_id: ACCOUNT_ID,
            api_id: API_ID,
            domain_name: domain,
            domain_prefix,
            http: HttpDescription {
                method: parts.method.as_str(),
                path: raw_path,
                protocol: protocol(parts.version),
                source_ip: ctx.source_ip.map(|ip| ip.to_string()),
                user_agent,
            },
            request_id: ctx.request_id,
            route_key: ctx.route_key,
            stage: ctx.stage,
            time: clf_time(since_epoch.as_secs()),
            time_epoch: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
        },
        body,
        is_base64_encoded,
    };
    // Serializing maps with string keys and plain structs cannot fail.
    serde_json::to_vec(&event).unwrap_or_default()
}

fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The body as the event carries it: text as is, anything else base64; `None` when empty.
fn encode_body<'a>(
    body: &'a [u8],
    content_type: Option<&HeaderValue>,
) -> (Option<Cow<'a, str>>, bool) {
    if body.is_empty() {
        return (None, false);
    }
    let textual = content_type.is_none_or(|v| v.to_str().is_ok_and(is_textual));
    match std::str::from_utf8(body) {
        Ok(text) if textual => (Some(Cow::Borrowed(text)), false),
        _ => (
            Some(Cow::Owned(
                base64::engine::general_purpose::STANDARD.encode(body),
            )),
            true,
        ),
    }
}

/// Whether a media type is text that handlers expect to read as a string.
fn is_textual(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/javascript"
                | "application/ecmascript"
                | "application/xml"
                | "application/x-www-form-urlencoded"
                | "application/graphql"
                | "application/yaml"
                | "application/x-yaml"
                | "application/x-ndjson"
        )
}

/// `queryStringParameters`: decoded keys and values, repeats joined by `,`; `None` without a
/// query. A `+` stays a `+`, as in the raw query string.
fn query_parameters(query: &str) -> Option<BTreeMap<String, String>> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut parameters: BTreeMap<String, String> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value);
        parameters
            .entry(decode(key))
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    (!parameters.is_empty()).then_some(parameters)
}

/// `requestContext.time`: the common log format in UTC, e.g. `12/Mar/2020:19:03:58 +0000`.
fn clf_time(epoch_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = epoch_secs / 86_400;
    let secs = epoch_secs % 86_400;
    let (year, month, day) = civil_date(days);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian (year, month 1–12, day 1–31) of a day count since 1970-01-01.
/// Counts in 400-year eras (146,097 days) from 0000-03-01, so leap days fall at the end of
/// each counted year.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// Turns a handler's result into the HTTP response, with Lambda's inference rules.
///
/// An object with `statusCode` is an HTTP response (`headers`, `multiValueHeaders`, `cookies`,
/// `body`, `isBase64Encoded`). Any other result is a 200 `application/json` response whose body
/// is the result as it is: valid JSON without `statusCode` as Lambda infers it, and bytes that
/// are not JSON at all as Function URLs return them. The error is a message for a 502.
pub(crate) fn http_response(result: &[u8]) -> Result<Response<Bytes>, String> {
    let inferred = || {
        let mut response = Response::new(Bytes::copy_from_slice(result));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(response)
    };
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(result) else {
        return inferred();
    };
    let Some(status) = fields.get("statusCode") else {
        return inferred();
    };
    let head = head_of(status, &fields)?;
    let base64 = match fields.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "the function's result has isBase64Encoded {other}, not true or false"
            ));
        }
    };
    let body = match fields.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(text)) if base64 => {
            Bytes::from(lenient_base64().decode(text).map_err(|e| {
                format!(
                    "the function's result says isBase64Encoded but its body is not base64 ({e})"
                )
            })?)
        }
        Some(Value::String(text)) => Bytes::from(text.clone()),
        Some(_) => {
            return Err(
                "the function's result has a body that is not a string: serialize it \
                        (JSON.stringify, json.dumps) or return the object without statusCode"
                    .to_owned(),
            );
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// Base64 as handlers write it: standard alphabet, padding optional.
fn lenient_base64() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

/// Status and headers of a response, from a result or a stream's prelude.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    /// `statusCode`.
    pub status: StatusCode,
    /// `headers`, `multiValueHeaders` and one `set-cookie` per entry of `cookies`.
    pub headers: HeaderMap,
}

/// Reads `statusCode`, `headers`, `multiValueHeaders` and `cookies`.
fn head_of(status: &Value, fields: &Map<String, Value>) -> Result<ResponseHead, String> {
    let status = status
        .as_u64()
        .and_then(|code| u16::try_from(code).ok())
        .filter(|code| (100..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| {
            format!(
                "the function's result has statusCode {status}, which is not an HTTP status: \
                 return a number from 100 to 599"
            )
        })?;
    let mut headers = HeaderMap::new();
    match fields.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                if let Some(value) = header_value(name, value)? {
                    headers.insert(header_name(name)?, value);
                }
            }
        }
        Some(_) => {
            return Err("the function's result has headers that are not an object".to_owned());
        }
    }
    match fields.get("multiValueHeaders") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, values) in map {
                let Value::Array(values) = values else {
                    return Err(format!(
                        "the function's result has multiValueHeaders.{name} that is not a list"
                    ));
                };
                // The list replaces the single value: clients such as `lambda_http` send
                // each header in both, the first value under `headers`.
                let name_ = header_name(name)?;
                headers.remove(&name_);
                for value in values {
                    if let Some(value) = header_value(name, value)? {
                        headers.append(name_.clone(), value);
                    }
                }
            }
        }
        Some(_) => {
            return Err(
                "the function's result has multiValueHeaders that are not an object".to_owned(),
            );
        }
    }
    match fields.get("cookies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cookies)) => {
            for cookie in cookies {
                let Some(value) = cookie.as_str().and_then(|c| HeaderValue::from_str(c).ok())
                else {
                    return Err(format!(
                        "the function's result has the cookie {cookie}, which is not a valid \
                         Set-Cookie value"
                    ));
                };
                headers.append(header::SET_COOKIE, value);
            }
        }
        Some(_) => return Err("the function's result has cookies that are not a list".to_owned()),
    }
    Ok(ResponseHead { status, headers })
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        format!("the function's result has the header name {name:?}, which is not valid")
    })
}

/// A header value from a string, number or boolean; `None` for null.
fn header_value(name: &str, value: &Value) -> Result<Option<HeaderValue>, String> {
    let text = match value {
        Value::Null => return Ok(None),
        Value::String(s) => Cow::Borrowed(s.as_str()),
        Value::Number(n) => Cow::Owned(n.to_string()),
        Value::Bool(b) => Cow::Owned(b.to_string()),
        _ => {
            return Err(format!(
                "the function's result has header {name:?} set to {value}; header values are \
                 strings"
            ));
        }
    };
    HeaderValue::from_str(&text).map(Some).map_err(|_| {
        format!("the function's result has header {name:?} set to {text:?}, which is not a valid header value")
    })
}

/// The bytes that end the JSON prelude of an http-integration stream.
const PRELUDE_END: [u8; 8] = [0; 8];

/// Longest prelude read before giving up on finding its end. Bounds memory a function that
/// never ends its prelude can make Nubo hold.
const MAX_PRELUDE_BYTES: usize = 1024 * 1024;

/// For streamed http-integration responses: splits the JSON prelude (`statusCode`, `headers`,
/// `cookies`) from the body at the 8 NUL bytes; fed incrementally (chunks arrive in pieces).
#[derive(Debug, Default)]
pub(crate) struct PreludeParser {
    buffer: BytesMut,
    done: bool,
}

impl PreludeParser {
    /// A parser that has seen nothing yet.
    pub(crate) fn new() -> PreludeParser {
        PreludeParser::default()
    }

    /// Feeds the next chunk. `Ok(None)`: the prelude has not ended yet. `Ok(Some)`: the head
    /// and the body bytes that followed the prelude in what was fed; the parser is done and
    /// refuses further chunks. `Err`: a message for a 502.
    pub(crate) fn push(
        &mut self,
        mut chunk: Bytes,
    ) -> Result<Option<(ResponseHead, Bytes)>, String> {
        if self.done {
            return Err("the prelude of this response was read already".to_owned());
        }
        let held = self.buffer.len();
        // The end marker may straddle chunks: look again at the last 7 bytes held.
        let from = held.saturating_sub(PRELUDE_END.len() - 1);
        self.buffer.extend_from_slice(&chunk);
        let Some(at) = self.buffer[from..]
            .windows(PRELUDE_END.len())
            .position(|w| w == PRELUDE_END)
            .map(|i| from + i)
        else {
            if self.buffer.len() > MAX_PRELUDE_BYTES {
                return Err(format!(
                    "the function streamed {} bytes without ending its response prelude with 8 \
                     NUL bytes; use the runtime's HTTP response stream helper",
                    self.buffer.len()
                ));
            }
            return Ok(None);
        };
        self.done = true;
        // No earlier chunk held the whole marker, so it ends inside this one: the body bytes
        // are the chunk's tail, passed on without a copy.
        chunk.advance(at + PRELUDE_END.len() - held);
        let rest = chunk;
        let prelude = &self.buffer[..at];
        let fields = match serde_json::from_slice::<Value>(prelude) {
            Ok(Value::Object(fields)) => fields,
            _ => {
                return Err(format!(
                    "the function's response prelude is not a JSON object: {}",
                    String::from_utf8_lossy(&prelude[..prelude.len().min(200)])
                ));
            }
        };
        // A stream's prelude may leave the status out; it is then 200.
        let status = fields
            .get("statusCode")
            .cloned()
            .unwrap_or(Value::from(200));
        let head = head_of(&status, &fields)?;
        self.buffer = BytesMut::new();
        Ok(Some((head, rest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
    use std::time::Duration;

    /// 2020-03-12 19:03:58.123 UTC.
    fn when() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_584_039_838_123)
    }

    fn context() -> EventContext<'static> {
        EventContext {
            request_id: "req-1",
            route_key: "$default",
            source_ip: Some("203.0.113.7".parse().unwrap()),
            time: when(),
            domain: Some("api.example.com"),
            stage: "$default",
        }
    }

    fn event_of(request: http::Request<Vec<u8>>) -> Value {
        let (parts, body) = request.into_parts();
        serde_json::from_slice(&http_event(&parts, &body, &context())).unwrap()
    }

    #[test]
    fn a_request_becomes_a_payload_2_event() {
        let request = http::Request::post("/items/42?b=2&a=x%20y&b=3&flag")
            .header("User-Agent", "curl/8.0")
            .header("X-Multi", "one")
            .header("x-multi", "two")
            .header("Cookie", "s=1; theme=dark")
            .header("cookie", "late=yes")
            .header("content-type", "application/json")
            .body(br#"{"name":"n"}"#.to_vec())
            .unwrap();
        let event = event_of(request);
        let expected = serde_json::json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/items/42",
            "rawQueryString": "b=2&a=x%20y&b=3&flag",
            "cookies": ["s=1", "theme=dark", "late=yes"],
            "headers": {
                "user-agent": "curl/8.0",
                "x-multi": "one,two",
                "content-type": "application/json",
            },
            "queryStringParameters": {"a": "x y", "b": "2,3", "flag": ""},
            "requestContext": {
                "accountId": "000000000000",
                "apiId": "nubo",
                "domainName": "api.example.com",
                "domainPrefix": "api",
                "http": {
                    "method": "POST",
                    "path": "/items/42",
                    "protocol": "HTTP/1.1",
                    "sourceIp": "203.0.113.7",
                    "userAgent": "curl/8.0",
                },
                "requestId": "req-1",
                "routeKey": "$default",
                "stage": "$default",
                "time": "12/Mar/2020:19:03:58 +0000",
                "timeEpoch": 1_584_039_838_123_u64,
            },
            "body": r#"{"name":"n"}"#,
            "isBase64Encoded": false,
        });
        assert_eq!(event, expected);
    }

    #[test]
    fn events_read_back_with_the_lambda_event_types() {
        // What Rust handlers built on `lambda_http` / `aws_lambda_events` deserialize.
        let request = http::Request::get("/p?q=1")
            .header("cookie", "a=b")
            .header("x-k", "v")
            .body(Vec::new())
            .unwrap();
        let (parts, body) = request.into_parts();
        let bytes = http_event(&parts, &body, &context());
        let parsed: ApiGatewayV2httpRequest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed.raw_path.as_deref(), Some("/p"));
        assert_eq!(parsed.raw_query_string.as_deref(), Some("q=1"));
        assert_eq!(parsed.cookies, Some(vec!["a=b".to_owned()]));
        assert_eq!(parsed.headers.get("x-k").unwrap(), "v");
        assert_eq!(parsed.query_string_parameters.first("q"), Some("1"));
        assert_eq!(parsed.request_context.http.method, http::Method::GET);
        assert_eq!(parsed.request_context.time_epoch, 1_584_039_838_123);
        assert_eq!(parsed.request_context.request_id.as_deref(), Some("req-1"));
        assert!(parsed.body.is_none());
        assert!(!parsed.is_base64_encoded);
    }

    #[test]
    fn without_query_cookies_or_body_those_fields_are_absent() {
        let event = event_of(http::Request::get("/").body(Vec::new()).unwrap());
        let fields = event.as_object().unwrap();
        for absent in [
            "cookies",
            "queryStringParameters",
            "body",
            "pathParameters",
            "stageVariables",
        ] {
            assert!(!fields.contains_key(absent), "{absent} in {event}");
        }
        assert_eq!(event["rawQueryString"], "");
        assert_eq!(event["isBase64Encoded"], false);
        assert_eq!(event["requestContext"]["http"]["userAgent"], "");
    }

    #[test]
    fn binary_bodies_travel_as_base64_both_ways() {
        let bytes: Vec<u8> = (0..=255).collect();
        let event = event_of(
            http::Request::post("/upload")
                .header("content-type", "image/png")
                .body(bytes.clone())
                .unwrap(),
        );
        assert_eq!(event["isBase64Encoded"], true);
        let encoded = event["body"].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, bytes);

        // The handler echoes it back.
        let result = serde_json::json!({
            "statusCode": 200,
            "headers": {"content-type": "image/png"},
            "body": encoded,
            "isBase64Encoded": true,
        });
        let response = http_response(result.to_string().as_bytes()).unwrap();
        assert_eq!(response.headers()["content-type"], "image/png");
        assert_eq!(response.body().as_ref(), bytes.as_slice());
    }

    #[test]
    fn text_that_is_not_textual_or_not_utf8_is_base64() {
        let octets = event_of(
            http::Request::post("/")
                .header("content-type", "application/octet-stream")
                .body(b"plain".to_vec())
                .unwrap(),
        );
        assert_eq!(octets["isBase64Encoded"], true);
        assert_eq!(octets["body"], "cGxhaW4=");
        let untyped_binary = event_of(http::Request::post("/").body(vec![0xff, 0xfe]).unwrap());
        assert_eq!(untyped_binary["isBase64Encoded"], true);
        let untyped_text = event_of(http::Request::post("/").body(b"hi".to_vec()).unwrap());
        assert_eq!(untyped_text["isBase64Encoded"], false);
        assert_eq!(untyped_text["body"], "hi");
        let form = event_of(
            http::Request::post("/")
                .header(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                )
                .body(b"a=1".to_vec())
                .unwrap(),
        );
        assert_eq!(form["body"], "a=1");
        let json_ld = event_of(
            http::Request::post("/")
                .header("content-type", "application/ld+json")
                .body(b"{}".to_vec())
                .unwrap(),
        );
        assert_eq!(json_ld["isBase64Encoded"], false);
    }

    #[test]
    fn dates_format_in_the_common_log_format() {
        assert_eq!(clf_time(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(clf_time(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(clf_time(1_709_251_199), "29/Feb/2024:23:59:59 +0000");
        assert_eq!(clf_time(4_102_444_800), "01/Jan/2100:00:00:00 +0000");
    }

    #[test]
    fn a_result_with_status_code_is_an_http_response() {
        let result = serde_json::json!({
            "statusCode": 201,
            "headers": {"X-Single": "a", "content-type": "text/plain", "x-count": 3, "x-gone": null},
            "multiValueHeaders": {"x-multi": ["1", "2"], "x-single": ["a", "b"]},
            "cookies": ["s=1; Path=/", "t=2; HttpOnly"],
            "body": "created",
        });
        let response = http_response(result.to_string().as_bytes()).unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers["x-count"], "3");
        assert!(!headers.contains_key("x-gone"));
        let all = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-multi"), ["1", "2"]);
        assert_eq!(all("x-single"), ["a", "b"]);
        assert_eq!(all("set-cookie"), ["s=1; Path=/", "t=2; HttpOnly"]);
        assert_eq!(response.body().as_ref(), b"created");
    }

    #[test]
    fn a_status_code_without_body_is_an_empty_response() {
        let response = http_response(br#"{"statusCode": 204}"#).unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert!(response.body().is_empty());
        assert!(response.headers().is_empty());
    }

    #[test]
    fn json_without_status_code_is_a_200_json_body() {
        for result in [
            &br#"{"message": "hi"}"#[..],
            b"[1, 2]",
            b"42",
            br#""just a string""#,
            b"null",
        ] {
            let response = http_response(result).unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], "application/json");
            assert_eq!(response.body().as_ref(), result);
        }
    }

    #[test]
    fn a_result_that_is_not_json_is_returned_as_is() {
        let response = http_response(b"plain words").unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.body().as_ref(), b"plain words");
    }

    #[test]
    fn malformed_results_are_refused_with_a_message() {
        for (result, says) in [
            (r#"{"statusCode": "200"}"#, "not an HTTP status"),
            (r#"{"statusCode": 99}"#, "not an HTTP status"),
            (r#"{"statusCode": 600}"#, "not an HTTP status"),
            (r#"{"statusCode": 200.5}"#, "not an HTTP status"),
            (
                r#"{"statusCode": 200, "body": {"a": 1}}"#,
                "body that is not a string",
            ),
            (
                r#"{"statusCode": 200, "body": "%%%", "isBase64Encoded": true}"#,
                "not base64",
            ),
            (
                r#"{"statusCode": 200, "headers": {"x": [1]}}"#,
                "header values are strings",
            ),
            (
                r#"{"statusCode": 200, "headers": {"bad name": "v"}}"#,
                "header name",
            ),
            (
                r#"{"statusCode": 200, "headers": {"x": "a\nb"}}"#,
                "not a valid header value",
            ),
            (
                r#"{"statusCode": 200, "cookies": "a=b"}"#,
                "cookies that are not a list",
            ),
            (
                r#"{"statusCode": 200, "multiValueHeaders": {"x": "1"}}"#,
                "not a list",
            ),
        ] {
            let error = http_response(result.as_bytes()).expect_err(result);
            assert!(error.contains(says), "{result}: {error}");
        }
    }

    #[test]
    fn the_prelude_is_split_from_the_body_across_chunks() {
        let prelude =
            br#"{"statusCode":202,"headers":{"content-type":"text/csv"},"cookies":["c=1"]}"#;
        let mut stream = prelude.to_vec();
        stream.extend_from_slice(&[0; 8]);
        stream.extend_from_slice(b"a,b\n1,2\n");
        // Every split point, including ones inside the NUL run.
        for cut in 1..stream.len() {
            let mut parser = PreludeParser::new();
            let first = parser.push(Bytes::copy_from_slice(&stream[..cut])).unwrap();
            let (head, body) = match first {
                // The second chunk is body only; the caller passes it on as it is.
                Some((head, rest)) => (head, Bytes::from([&rest[..], &stream[cut..]].concat())),
                None => parser
                    .push(Bytes::copy_from_slice(&stream[cut..]))
                    .unwrap()
                    .expect("ended"),
            };
            assert_eq!(head.status, StatusCode::ACCEPTED, "cut {cut}");
            assert_eq!(head.headers["content-type"], "text/csv");
            assert_eq!(head.headers["set-cookie"], "c=1");
            assert_eq!(body.as_ref(), b"a,b\n1,2\n", "cut {cut}");
        }
    }

    #[test]
    fn a_prelude_without_status_is_200_and_bad_preludes_are_refused() {
        let mut parser = PreludeParser::new();
        let (head, rest) = parser
            .push(Bytes::from_static(b"{}\0\0\0\0\0\0\0\0"))
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert!(rest.is_empty());
        assert!(parser.push(Bytes::from_static(b"more")).is_err());

        let error = PreludeParser::new()
            .push(Bytes::from_static(b"nope\0\0\0\0\0\0\0\0body"))
            .unwrap_err();
        assert!(error.contains("not a JSON object"), "{error}");

        let mut parser = PreludeParser::new();
        let chunk = Bytes::from(vec![b' '; 256 * 1024]);
        let mut outcome = Ok(None);
        for _ in 0..8 {
            outcome = parser.push(chunk.clone());
            if outcome.is_err() {
                break;
            }
        }
        let error = outcome.unwrap_err();
        assert!(
            error.contains("without ending its response prelude"),
            "{error}"
        );
    }
}
