//! Destinations of async invocations: a record of each finished async invocation goes to
//! another function of the app, and destination deliveries never trigger destinations; an async
//! request cannot be pinned to a revision.

use crate::support::*;
use std::time::Duration;

/// The async invocations of `function` in app `app`, newest first.
fn async_of(s: &Server, app: &str, function: &str) -> Vec<serde_json::Value> {
    s.api(&format!(
        "/_nubo/api/v1/apps/{app}/async?function={function}"
    ))["invocations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits (bounded) for `function` to have an async invocation in state `state`; returns its
/// detail.
fn settled(s: &Server, app: &str, function: &str, state: &str) -> serde_json::Value {
    let id = eventually(Duration::from_secs(20), || {
        async_of(s, app, function)
            .into_iter()
            .find(|i| i["state"] == state)
            .and_then(|i| i["id"].as_str().map(str::to_string))
    });
    s.api(&format!("/_nubo/api/v1/invocations/{id}"))["async"].clone()
}

#[test]
fn outcome_records_go_to_the_destination_functions() {
    let s = Server::start();
    let manifest = format!(
        "[app]\nname = \"dest\"\n\n\
         [function.api]\nsource = \"{echo}\"\non_success = \"audit\"\n\n\
         [function.broken]\nsource = \"{trap}\"\non_failure = \"function:audit\"\n\
         retry = {{ max_attempts = 2, backoff = \"20ms\" }}\n\n\
         [function.audit]\nsource = \"{echo}\"\non_success = \"api\"\n\n\
         [[route]]\npath = \"/dest/api\"\nfunction = \"api\"\n\n\
         [[route]]\npath = \"/dest/broken\"\nfunction = \"broken\"\n",
        echo = guest("echo").display(),
        trap = guest("trap").display()
    );
    let dir = app_dir(&manifest);
    s.ok(&["deploy", "--no-build", dir.path().to_str().unwrap()]);

    let ok = http(
        s.addr,
        "POST",
        "/dest/api",
        &[
            ("nubo-invocation-type", "event"),
            ("content-type", "application/json"),
        ],
        br#"{"order":42}"#,
    );
    assert_eq!(ok.status, 202, "{}", ok.text());
    let ok_id = ok.json()["invocation_id"].as_str().unwrap().to_string();
    let audit = settled(&s, "dest", "audit", "succeeded");
    let record: serde_json::Value =
        serde_json::from_str(audit["body"].as_str().expect("a JSON record")).unwrap();
    assert_eq!(record["requestContext"]["requestId"], ok_id.as_str());
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(record["requestPayload"]["order"], 42);
    assert_eq!(record["responseContext"]["statusCode"], 200);
    assert_eq!(audit["method"], "POST");

    let bad = http(
        s.addr,
        "POST",
        "/dest/broken",
        &[("nubo-invocation-type", "event")],
        b"not json",
    );
    assert_eq!(bad.status, 202, "{}", bad.text());
    let bad_id = bad.json()["invocation_id"].as_str().unwrap().to_string();
    let record = eventually(Duration::from_secs(20), || {
        async_of(&s, "dest", "audit")
            .into_iter()
            .filter(|i| i["state"] == "succeeded")
            .filter_map(|i| {
                let d = s.api(&format!(
                    "/_nubo/api/v1/invocations/{}",
                    i["id"].as_str().unwrap()
                ))["async"]
                    .clone();
                serde_json::from_str::<serde_json::Value>(d["body"].as_str()?).ok()
            })
            .find(|r| r["requestContext"]["requestId"] == bad_id.as_str())
    });
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(record["requestPayload"], "not json");
    assert!(
        record["responsePayload"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("trapped"),
        "{record}"
    );

    // audit's own on_success (to api) is not followed for destination deliveries: api ran
    // once, for the request above, and never for a record.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(async_of(&s, "dest", "api").len(), 1);
    assert_eq!(async_of(&s, "dest", "audit").len(), 2);
}

#[test]
fn bad_destinations_are_refused_at_deploy() {
    let s = Server::start();
    let manifest = format!(
        "[app]\nname = \"dest\"\n\n[function.api]\nsource = \"{}\"\non_failure = \"alert\"\n",
        guest("echo").display()
    );
    let dir = app_dir(&manifest);
    let out = s.nubo(&["deploy", "--no-build", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("on_failure points to unknown function \"alert\""),
        "{err}"
    );
}

#[test]
fn an_async_request_cannot_be_pinned_to_a_revision() {
    let s = Server::start();
    let dir = guest_app("pin", "api", &guest("echo"), "", &["/pin/..."]);
    s.ok(&["deploy", "--no-build", dir.path().to_str().unwrap()]);
    for (path, headers) in [
        ("/pin/x", vec![("nubo-revision", "1")]),
        ("/_rev/1/pin/x", vec![]),
    ] {
        let mut h = headers;
        h.push(("nubo-invocation-type", "event"));
        let e = http(s.addr, "POST", path, &h, b"").assert_error(400, "bad_request");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot be pinned"),
            "{e}"
        );
    }
    assert!(async_of(&s, "pin", "api").is_empty(), "nothing was queued");
}

#[test]
fn a_queue_destination_receives_the_failure_record() {
    let s = Server::start();
    let manifest = format!(
        "[app]\nname = \"qdest\"\n\n\
         [function.broken]\nsource = \"{trap}\"\non_failure = \"queue:failed-work\"\n\
         retry = {{ max_attempts = 2, backoff = \"20ms\" }}\n\n\
         [function.reader]\nsource = \"{chain}\"\nenv = {{ CHAIN_ROUTE = \"/dump\" }}\n\n\
         [[trigger.queue]]\nfunction = \"reader\"\nqueue = \"failed-work\"\n\n\
         [[route]]\npath = \"/qdest/broken\"\nfunction = \"broken\"\n",
        trap = guest("trap").display(),
        chain = guest("chain").display()
    );
    let dir = app_dir(&manifest);
    s.ok(&["deploy", "--no-build", dir.path().to_str().unwrap()]);
    // The deploy created the queue the destination names.
    assert!(s.ok(&["queue", "ls"]).contains("failed-work"));
    let r = http(
        s.addr,
        "POST",
        "/qdest/broken",
        &[
            ("nubo-invocation-type", "event"),
            ("content-type", "application/json"),
        ],
        br#"{"job":7}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["invocation_id"].as_str().unwrap().to_string();
    // The record went through the queue to the reader, as a queue message CloudEvent.
    let dumped = eventually(Duration::from_secs(30), || {
        let r = http(
            s.addr,
            "GET",
            "/_nubo/api/v1/apps/qdest/logs?function=reader",
            &[],
            b"",
        );
        r.text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["line"].as_str().map(str::to_string))
            .find_map(|l| l.strip_prefix("REQUEST ").map(str::to_string))
    });
    let req: serde_json::Value = serde_json::from_str(&dumped).unwrap();
    assert_eq!(req["headers"]["ce-type"], "dev.nubo.queue.message");
    assert_eq!(req["headers"]["ce-source"], "/queues/failed-work");
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD
        .decode(req["body"].as_str().unwrap())
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(record["requestContext"]["requestId"], id.as_str());
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestPayload"]["job"], 7);
}
