//! Observability end to end: OpenTelemetry traces exported by the real `kappa up` to an OTLP/HTTP
//! receiver on loopback (decoding the real protobuf), and the per-function metrics.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

use crate::harness::{Platform, http};
use crate::triggers::{Nats, wait_ready};
use kappa_test_support::eventually_blocking;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    service: String,
    attrs: HashMap<String, String>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const CONSUMER: i32 = 5;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// A minimal OTLP/HTTP receiver: `POST /v1/traces` with an `ExportTraceServiceRequest`.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let sink = Arc::clone(&spans);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || serve(conn, &sink));
            }
        });
        Self { addr, spans }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

/// Serves one keep-alive connection of the exporter.
fn serve(conn: std::net::TcpStream, sink: &Mutex<Vec<Span>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let request_line = line.trim().to_string();
        let mut length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
        assert!(
            request_line.starts_with("POST /v1/traces "),
            "{request_line}"
        );
        let export = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        let mut got = Vec::new();
        for rs in export.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Span {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name.clone(),
                        kind: s.kind,
                        service: service.clone(),
                        attrs: s
                            .attributes
                            .iter()
                            .map(|a| {
                                (
                                    a.key.clone(),
                                    text(a.value.as_ref().and_then(|v| v.value.as_ref())),
                                )
                            })
                            .collect(),
                    });
                }
            }
        }
        sink.lock().unwrap().extend(got);
        let _ = out.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
        );
    }
}

fn deploy_trace(p: &Platform) {
    p.python_env(&[]);
    p.deploy("trace", "examples/tracing/trace.py", "/trace", &[]);
}

/// Finds the one span of `trace` matching `pred`, waiting for the batch to arrive.
fn wait_span(rx: &Receiver, trace: &str, what: &str, pred: impl Fn(&Span) -> bool) -> Span {
    eventually_blocking(Duration::from_secs(30), what, || {
        rx.trace(trace).into_iter().find(|s| pred(s))
    })
}

fn traceparent_parts(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    (parts[1].to_string(), parts[2].to_string())
}

#[test]
fn traces_follow_requests_and_messages() {
    let rx = Receiver::start();
    let nats = Nats::start();
    let endpoint = format!("http://{}", rx.addr);
    let p = Platform::start_with_env(
        &["--no-example", "--nats-url", &nats.url()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "kappa-it"),
        ],
    );
    deploy_trace(&p);

    // Cold: the first request specializes an instance.
    let cold_trace = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let r = p.request(
        "GET",
        "/trace",
        &[
            ("traceparent", &format!("00-{cold_trace}-{client_span}-01")),
            ("tracestate", "vendor=abc"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    let invocation = r.header("x-kappa-invocation-id").unwrap().to_string();
    assert_eq!(seen["invocation_id"], invocation.as_str());
    let (seen_trace, seen_parent) = traceparent_parts(seen["traceparent"].as_str().unwrap());
    assert_eq!(
        seen_trace, cold_trace,
        "the function continues the caller's trace"
    );
    assert_ne!(
        seen_parent, client_span,
        "the function's parent is the router's span"
    );
    assert_eq!(seen["tracestate"], "vendor=abc", "tracestate passes on");
    let child = seen["child_traceparent"].as_str().unwrap();
    assert!(child.starts_with(&format!("00-{cold_trace}-")), "{child}");

    let server = wait_span(&rx, cold_trace, "the cold request's server span", |s| {
        s.kind == SERVER && s.attr("faas.trigger") == Some("http")
    });
    assert_eq!(server.parent, client_span, "{server:?}");
    assert_eq!(server.name, "GET /trace");
    assert_eq!(server.service, "kappa-it");
    assert_eq!(server.attr("faas.name"), Some("trace"));
    assert_eq!(server.attr("faas.invocation_id"), Some(invocation.as_str()));
    assert_eq!(server.attr("faas.coldstart"), Some("true"));
    assert_eq!(server.attr("http.route"), Some("/trace"));
    assert_eq!(server.attr("http.request.method"), Some("GET"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    let upstream = wait_span(&rx, cold_trace, "the upstream span", |s| {
        s.name == "upstream"
    });
    assert_eq!(upstream.kind, CLIENT);
    assert_eq!(upstream.parent, server.span_id);
    assert_eq!(
        upstream.span_id, seen_parent,
        "the instance got the upstream span's context"
    );
    let admission = wait_span(&rx, cold_trace, "the admission span", |s| {
        s.name == "admission"
    });
    assert_eq!(admission.parent, server.span_id);
    let provision = wait_span(&rx, cold_trace, "the provision span", |s| {
        s.name == "provision"
    });
    assert_eq!(provision.parent, admission.span_id);
    let specialization = wait_span(&rx, cold_trace, "the pool manager's span", |s| {
        s.name == "specialization"
    });
    assert_eq!(specialization.parent, provision.span_id);
    let instance = specialization
        .attr("kappa.instance.id")
        .expect("instance id")
        .to_string();
    let specialize = wait_span(&rx, cold_trace, "the specialize span", |s| {
        s.name == "specialize"
    });
    assert_eq!(specialize.parent, specialization.span_id);
    assert_eq!(
        specialize.attr("kappa.instance.id"),
        Some(instance.as_str())
    );
    assert_eq!(upstream.attr("kappa.instance.id"), Some(instance.as_str()));
    wait_span(&rx, cold_trace, "the place code span", |s| {
        s.name == "place code" && s.parent == specialize.span_id
    });
    wait_span(&rx, cold_trace, "the runtime specialize span", |s| {
        s.name == "runtime specialize" && s.parent == specialize.span_id
    });
    assert!(
        rx.trace(cold_trace)
            .iter()
            .any(|s| s.name == "take from pool" || s.name == "start instance"),
        "{:#?}",
        rx.trace(cold_trace)
    );

    // Warm: no admission, no provisioning.
    let warm_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = p.request(
        "GET",
        "/trace",
        &[(
            "traceparent",
            &format!("00-{warm_trace}-00f067aa0ba902b7-01"),
        )],
        b"",
    );
    assert_eq!(r.status, 200);
    let server = wait_span(&rx, warm_trace, "the warm request's server span", |s| {
        s.kind == SERVER
    });
    assert_eq!(server.attr("faas.coldstart"), Some("false"));
    wait_span(&rx, warm_trace, "the warm upstream span", |s| {
        s.name == "upstream" && s.parent == server.span_id
    });
    assert!(
        !rx.trace(warm_trace).iter().any(|s| s.name == "admission"),
        "a warm request is not admitted through the pool manager"
    );

    // A request without a trace context starts a new trace.
    let r = p.get("/trace");
    let tp = r.json()["traceparent"].as_str().unwrap().to_string();
    let (fresh, _) = traceparent_parts(&tp);
    assert_ne!(fresh, "0".repeat(32));

    // A message through a JetStream trigger continues the publisher's trace.
    nats.watch("traced-out");
    p.ok(&[
        "mqtrigger",
        "create",
        "--name",
        "traced",
        "--function",
        "trace",
        "--mqtype",
        "nats-jetstream",
        "--topic",
        "traced",
        "--resptopic",
        "traced-out",
    ]);
    wait_ready(&p, "mqtrigger", "traced");
    let mq_trace = "11112222333344445555666677778888";
    let publisher = "1234567890abcdef";
    nats.publish(
        "traced",
        "{}",
        &[("traceparent", &format!("00-{mq_trace}-{publisher}-01"))],
    );
    let replies = eventually_blocking(Duration::from_secs(60), "the reply on traced-out", || {
        let got = nats.got("traced-out");
        (!got.is_empty()).then_some(got)
    });
    let reply: serde_json::Value = serde_json::from_slice(&replies[0].1).unwrap();
    let (seen_trace, _) = traceparent_parts(reply["traceparent"].as_str().unwrap());
    assert_eq!(seen_trace, mq_trace, "the function saw the message's trace");
    let message = wait_span(&rx, mq_trace, "the message span", |s| s.kind == CONSUMER);
    assert_eq!(message.parent, publisher);
    assert_eq!(message.attr("faas.trigger"), Some("pubsub"));
    assert_eq!(message.attr("messaging.system"), Some("nats"));
    assert_eq!(message.attr("messaging.destination.name"), Some("traced"));
    assert_eq!(message.attr("faas.name"), Some("trace"));
    let invoke = wait_span(&rx, mq_trace, "the router's span of the message", |s| {
        s.kind == SERVER
    });
    assert_eq!(invoke.parent, message.span_id);
    assert_eq!(invoke.attr("faas.trigger"), Some("pubsub"));
    assert!(invoke.attr("faas.invocation_id").is_some());

    // The platform's log lines of a traced request carry its invocation and trace ids.
    let log = p.log();
    assert!(
        log.lines()
            .any(|l| l.contains(cold_trace) && l.contains(&invocation)),
        "no log line with the trace and invocation ids"
    );
    // And `kappa fn logs` shows the function's own line with both.
    eventually_blocking(Duration::from_secs(20), "the function's log line", || {
        let logs = p.ok(&["fn", "logs", "--name", "trace"]);
        logs.lines()
            .any(|l| l.contains(&invocation) && l.contains(cold_trace))
            .then_some(())
    });
}

/// Cluster roles (`kappa server --executor-url`): the router provisions through the executor's
/// HTTP API, and the executor's spans join the request's trace through the `traceparent` the
/// router sends on that call. An unsampled request builds no span and its context passes on.
#[test]
fn traces_cross_the_router_executor_hop() {
    let rx = Receiver::start();
    let endpoint = format!("http://{}", rx.addr);
    let s = crate::roles::Server::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SERVICE_NAME", "kappa-roles"),
    ]);
    s.ok(&["env", "create", "--name", "python", "--image", "python"]);
    s.ok(&[
        "fn",
        "create",
        "--name",
        "trace",
        "--env",
        "python",
        "--code",
        &crate::harness::function_path("examples/tracing/trace.py"),
    ]);
    s.ok(&["route", "create", "--url", "/trace", "--function", "trace"]);

    // Sampled, and cold: the first request specializes an instance.
    let cold = "0123456789abcdef0123456789abcdef";
    let tp = format!("00-{cold}-abcdefabcdefabcd-01");
    let r = eventually_blocking(Duration::from_secs(60), "GET /trace", || {
        let r = http(s.router, "GET", "/trace", &[("traceparent", &tp)], b"").ok()?;
        (r.status != 404).then_some(r)
    });
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());

    // Not sampled by its caller: the router records nothing and passes the context on as is.
    let unsampled = "aaaabbbbccccddddeeeeffff00001111";
    let tp = format!("00-{unsampled}-1111222233334444-00");
    let r = http(s.router, "GET", "/trace", &[("traceparent", &tp)], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(seen["traceparent"], tp.as_str(), "passed on unchanged");
    // A sampled request after it, whose spans are exported after any of the unsampled one's.
    let later = "99998888777766665555444433332222";
    let tp = format!("00-{later}-abcdefabcdefabcd-01");
    let r = http(s.router, "GET", "/trace", &[("traceparent", &tp)], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    let provision = wait_span(&rx, cold, "the router's provision span", |sp| {
        sp.name == "provision" && sp.kind == CLIENT
    });
    let server = wait_span(&rx, cold, "the executor's provision span", |sp| {
        sp.name == "POST /v1/provision"
    });
    assert_eq!(server.kind, SERVER);
    assert_eq!(
        server.parent, provision.span_id,
        "the executor continues the router's provision span"
    );
    let specialization = wait_span(&rx, cold, "the pool manager's span", |sp| {
        sp.name == "specialization"
    });
    assert_eq!(specialization.parent, server.span_id);
    wait_span(&rx, cold, "the specialize span", |sp| {
        sp.name == "specialize" && sp.parent == specialization.span_id
    });
    wait_span(&rx, later, "the later request's server span", |sp| {
        sp.kind == SERVER && sp.attr("faas.trigger") == Some("http")
    });
    assert!(
        rx.trace(unsampled).is_empty(),
        "an unsampled request exports nothing: {:#?}",
        rx.trace(unsampled)
    );
}

/// The labelled series after a known sequence: two functions, one failing, a miss.
#[test]
fn metrics_are_labelled_by_function() {
    let p = Platform::start();
    p.python_env(&[]);
    p.deploy("m", "examples/hello/hello.py", "/m", &[]);
    p.deploy("boom", "testdata/python/exception.py", "/boom", &[]);
    for _ in 0..3 {
        assert_eq!(p.get("/m").status, 200);
    }
    assert_eq!(p.get("/boom").status, 500);
    assert_eq!(p.get("/nowhere").status, 404);

    let router = http(p.admin, "GET", "/metrics", &[], b"").unwrap().text();
    let expect = [
        r#"kappa_router_requests_total{namespace="default",function="m",code="200"} 3"#,
        r#"kappa_router_requests_total{namespace="default",function="boom",code="500"} 1"#,
        r#"kappa_router_function_duration_seconds_count{namespace="default",function="m"} 3"#,
        r#"kappa_router_cold_starts_total{namespace="default",function="m"} 1"#,
        r#"kappa_router_cold_start_seconds_count{namespace="default",function="m"} 1"#,
        r#"fission_function_calls_total{function_namespace="default",function_name="m",path="/m",method="GET",code="200"} 3"#,
        r#"fission_function_duration_seconds_count{function_namespace="default",function_name="m",path="/m",method="GET",code="200"} 3"#,
        r#"fission_function_errors_total{function_namespace="default",function_name="boom",path="/boom",method="GET",code="500"} 1"#,
    ];
    for line in expect {
        assert!(router.contains(line), "missing {line}\n{router}");
    }
    assert!(
        !router
            .contains(r#"kappa_router_function_duration_seconds_count{namespace="",function="""#),
        "a miss gets no function series"
    );
    assert!(!router.contains(
        r#"fission_function_errors_total{function_namespace="default",function_name="m""#
    ));

    let api = http(p.api, "GET", "/metrics", &[], b"").unwrap().text();
    let expect = [
        r#"kappa_executor_specialized_instances{namespace="default",function="m"} 1"#,
        r#"kappa_executor_starting_instances{namespace="default",function="m"} 0"#,
        r#"kappa_executor_cold_start_phase_seconds_count{namespace="default",function="m",phase="specialize"} 1"#,
        r#"kappa_executor_warm_instances{namespace="default",environment="python"}"#,
    ];
    for line in expect {
        assert!(api.contains(line), "missing {line}\n{api}");
    }

    // Asynchronous invocations: one of `m` through the router and one through the API (both
    // succeed), one of `boom` (three attempts: the default two retries, then dead-lettered).
    let async_header = [("X-Kappa-Invocation-Type", "async")];
    assert_eq!(p.request("GET", "/m", &async_header, b"").status, 202);
    assert_eq!(p.request("GET", "/boom", &async_header, b"").status, 202);
    let r = p.api("POST", "/v1/functions/m/invoke?async=true", b"");
    assert_eq!(r.status, 202, "{}", r.text());
    let router = http(p.admin, "GET", "/metrics", &[], b"").unwrap().text();
    for line in [
        r#"kappa_router_async_accepted_total{namespace="default",function="m"} 1"#,
        r#"kappa_router_async_accepted_total{namespace="default",function="boom"} 1"#,
    ] {
        assert!(router.contains(line), "missing {line}\n{router}");
    }
    let expect = [
        r#"kappa_api_async_accepted_total{namespace="default",function="m"} 1"#,
        r#"kappa_triggers_async_attempts_total{namespace="default",function="m",result="succeeded"} 2"#,
        r#"kappa_triggers_async_outcomes_total{namespace="default",function="m",outcome="succeeded"} 2"#,
        r#"kappa_triggers_async_queue_seconds_count{namespace="default",function="m"} 2"#,
        r#"kappa_triggers_async_attempts_total{namespace="default",function="boom",result="failed"} 3"#,
        r#"kappa_triggers_async_outcomes_total{namespace="default",function="boom",outcome="retried"} 2"#,
        r#"kappa_triggers_async_outcomes_total{namespace="default",function="boom",outcome="deadlettered"} 1"#,
        r#"kappa_triggers_async_queue_seconds_count{namespace="default",function="boom"} 1"#,
    ];
    let api = eventually_blocking(
        Duration::from_secs(60),
        "the asynchronous invocations' series",
        || {
            let api = http(p.api, "GET", "/metrics", &[], b"").ok()?.text();
            expect.iter().all(|line| api.contains(line)).then_some(api)
        },
    );
    assert!(
        !api.contains(r#"function="m",outcome="retried""#),
        "no retry of a success\n{api}"
    );
}
