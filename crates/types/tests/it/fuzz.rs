//! Fuzz targets: decoding and validating every resource kind from JSON and YAML, as the API
//! server does with a request body (bytes → JSON value by `Content-Type` → typed resource →
//! validation) and as the CLI does with a response.
//!
//! Inputs are valid resources of every kind mutated field by field (values of the wrong type,
//! out of range, unknown and missing fields), so most inputs get past the parser and exercise
//! validation; a second target feeds raw bytes to both parsers. Properties:
//! - decoding never panics, whatever the bytes;
//! - the same document decodes to the same resource, or fails, from a JSON and a YAML body;
//! - a resource that validated survives decode → encode → decode unchanged (JSON and YAML), its
//!   JSON encoding is a fixpoint, and it still validates;
//! - a validation error names the field (`apiVersion`, `kind`, `metadata.*` or `spec.*`) and
//!   says what was expected.
//!
//! Each runs for a few seconds in a normal test run; longer with `BOLERO_RANDOM_TEST_TIME_MS`, or
//! with libFuzzer through `cargo bolero test` (docs/security.md, "Fuzzing").

use std::time::Duration;

use bolero::{TypeGenerator, check};
use kappa_types::{
    ConfigMapSpec, EnvironmentSpec, FunctionSpec, HttpTriggerSpec, MessageQueueTriggerSpec,
    PackageSpec, Resource, SecretSpec, Spec, TimeTriggerSpec,
};
use serde_json::{Value, json};

/// How long each target runs in an ordinary test run (`BOLERO_RANDOM_TEST_TIME_MS` overrides).
const TEST_TIME: Duration = Duration::from_secs(3);

/// A valid resource of every kind, with most optional fields set so mutations reach them.
fn seeds() -> Vec<Value> {
    let sha = "ab".repeat(32);
    vec![
        json!({"apiVersion": "kappa.dev/v1", "kind": "Environment",
            "metadata": {"name": "python", "namespace": "default", "labels": {"a": "b"}, "annotations": {"c": "d"}},
            "spec": {"version": 2, "runtime": {"image": "python", "command": "python3 server.py"},
                "builder": {"image": "python-builder", "command": "build"}, "poolsize": 3,
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi", "pids": 64}},
                "terminationGracePeriod": 30, "keeparchive": true, "nodeSelector": {"k": "v"},
                "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule", "tolerationSeconds": 5}]}}),
        json!({"apiVersion": "kappa.dev/v1", "kind": "Package", "metadata": {"name": "pkg"},
            "spec": {"environment": {"name": "python", "namespace": "default"},
                "source": {"type": "url", "url": format!("archive://sha256/{sha}"), "checksum": {"type": "sha256", "sum": sha}},
                "deployment": {"type": "literal", "literal": "aGVsbG8=", "filename": "hello.py"},
                "buildcmd": "./build.sh"}}),
        json!({"apiVersion": "kappa.dev/v1", "kind": "Function", "metadata": {"name": "hello"},
            "spec": {"environment": {"name": "python"}, "package": {"packageref": {"name": "pkg", "namespace": "default", "resourceversion": "3"}, "functionName": "hello.main"},
                "executorType": "poolmgr", "minScale": 0, "maxScale": 5, "concurrency": 10, "requestsPerPod": 1,
                "functionTimeout": 60, "idletimeout": 120, "specializationTimeout": 120, "env": {"K": "V"},
                "secrets": [{"name": "db"}], "configmaps": [{"name": "cfg", "namespace": "default"}],
                "resources": {"limits": {"memory": "256Mi"}}}}),
        json!({"apiVersion": "kappa.dev/v1", "kind": "HttpTrigger", "metadata": {"name": "route"},
            "spec": {"host": "example.com", "relativeurl": "/users/{id}", "methods": ["GET", "POST"],
                "functionref": {"type": "function-weights", "functionweights": {"a": 80, "b": 20}}}}),
        json!({"apiVersion": "kappa.dev/v1", "kind": "MessageQueueTrigger", "metadata": {"name": "orders"},
            "spec": {"functionref": {"type": "name", "name": "hello"}, "messageQueueType": "nats-jetstream",
                "topic": "orders", "respTopic": "done", "errorTopic": "failed", "maxRetries": 3,
                "contentType": "application/json", "maxConcurrency": 4, "metadata": {"stream": "s"}, "secret": "nats"}}),
        json!({"apiVersion": "kappa.dev/v1", "kind": "TimeTrigger", "metadata": {"name": "tick"},
            "spec": {"cron": "@every 30s", "functionref": {"name": "hello"}, "method": "POST", "subpath": "/tick"}}),
        json!({"apiVersion": "kappa.dev/v1", "kind": "Secret", "metadata": {"name": "db"},
            "spec": {"data": {"password": "c2VjcmV0"}, "stringData": {"user": "admin"}}}),
        json!({"apiVersion": "kappa.dev/v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "spec": {"data": {"level": "debug", "config.json": "{}"}}}),
    ]
}

const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "status",
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "runtime",
    "image",
    "command",
    "builder",
    "poolsize",
    "resources",
    "requests",
    "limits",
    "cpu",
    "memory",
    "pids",
    "terminationGracePeriod",
    "keeparchive",
    "nodeSelector",
    "tolerations",
    "version",
    "environment",
    "package",
    "packageref",
    "functionName",
    "executorType",
    "minScale",
    "maxScale",
    "concurrency",
    "requestsPerPod",
    "functionTimeout",
    "idletimeout",
    "specializationTimeout",
    "env",
    "secrets",
    "configmaps",
    "source",
    "deployment",
    "buildcmd",
    "type",
    "literal",
    "url",
    "checksum",
    "sum",
    "filename",
    "host",
    "relativeurl",
    "prefix",
    "keepPrefix",
    "methods",
    "functionref",
    "functionweights",
    "messageQueueType",
    "topic",
    "respTopic",
    "errorTopic",
    "maxRetries",
    "contentType",
    "maxConcurrency",
    "secret",
    "cron",
    "method",
    "subpath",
    "data",
    "stringData",
    "resourceversion",
    "bogus",
    "",
];

fn strings() -> Vec<String> {
    let mut out: Vec<String> = [
        "",
        "x",
        "python",
        "Hello",
        "-a",
        "a-",
        "../etc",
        "GET",
        "get",
        "FETCH",
        "/",
        "/a/{id}",
        "/{*rest}/a",
        "/files/{*p}",
        "/a b",
        "//",
        "/a/./b",
        "100m",
        "1.5",
        "64Mi",
        "1e3",
        "-1",
        "0",
        "@every 1s",
        "@every 0s",
        "*/5 * * * *",
        "61 * * * *",
        "nats-jetstream",
        "redis",
        "http://x",
        "ftp://x",
        "name",
        "literal",
        "url",
        "function-weights",
        "newdeploy",
        "poolmgr",
        "aGVsbG8=",
        "\u{0}",
        "é",
        "kappa.dev/v1",
        "Environment",
        "Function",
        "true",
        "null",
        "~",
        "yes",
        "0x10",
        "2026-01-01T00:00:00Z",
        "a.b",
        "a..b",
        "{",
        "}",
        "key with space",
        "\n",
        "'",
        "\"",
        "- a",
        "a: b",
        "&x",
        "*x",
        "!tag",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    out.push("a".repeat(63));
    out.push("a".repeat(64));
    out.push(format!("archive://sha256/{}", "ab".repeat(32)));
    out.push(format!("archive://sha256/{}", "AB".repeat(32)));
    out.push("x".repeat(300_000));
    out
}

fn numbers() -> Vec<Value> {
    vec![
        json!(0),
        json!(1),
        json!(-1),
        json!(3),
        json!(63),
        json!(64),
        json!(1000),
        json!(10_001),
        json!(86_401),
        json!(65_536),
        json!(2_147_483_648u64),
        json!(4_294_967_296u64),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5),
        json!(1e300),
        json!(0.0),
        json!(-0.0),
    ]
}

#[derive(Debug, Clone, TypeGenerator)]
enum GenValue {
    Str(u8),
    Num(u8),
    Bool(bool),
    Null,
    EmptyArray,
    EmptyObject,
    ArrayOf(u8),
    ObjectOf(u8, u8),
    Free(String),
}

impl GenValue {
    fn value(&self, strings: &[String], numbers: &[Value]) -> Value {
        let s = |i: u8| Value::String(strings[usize::from(i) % strings.len()].clone());
        match self {
            GenValue::Str(i) => s(*i),
            GenValue::Num(i) => numbers[usize::from(*i) % numbers.len()].clone(),
            GenValue::Bool(b) => Value::Bool(*b),
            GenValue::Null => Value::Null,
            GenValue::EmptyArray => json!([]),
            GenValue::EmptyObject => json!({}),
            GenValue::ArrayOf(i) => json!([s(*i)]),
            GenValue::ObjectOf(k, v) => {
                let mut map = serde_json::Map::new();
                map.insert(KEYS[usize::from(*k) % KEYS.len()].to_owned(), s(*v));
                Value::Object(map)
            }
            GenValue::Free(text) => Value::String(text.clone()),
        }
    }
}

/// One edit of the seed document, at the node `path` leads to (each step picks a key or
/// element by index, stopping at a leaf).
#[derive(Debug, Clone, TypeGenerator)]
enum Op {
    Set {
        path: Vec<u8>,
        value: GenValue,
    },
    Remove {
        path: Vec<u8>,
    },
    Insert {
        path: Vec<u8>,
        key: u8,
        value: GenValue,
    },
}

#[derive(Debug, Clone, TypeGenerator)]
struct Case {
    kind: u8,
    ops: Vec<Op>,
    yaml: bool,
}

/// The node `path` leads to: each step picks a key or element by index, stopping at a leaf.
fn node<'v>(root: &'v mut Value, path: &[u8]) -> &'v mut Value {
    let mut cur = root;
    for step in path.iter().take(6) {
        let step = usize::from(*step);
        let next = match &*cur {
            Value::Object(map) if !map.is_empty() => {
                Some(map.keys().nth(step % map.len()).cloned().unwrap())
            }
            Value::Array(items) if !items.is_empty() => Some((step % items.len()).to_string()),
            _ => None,
        };
        let Some(key) = next else {
            break;
        };
        cur = match cur {
            Value::Object(map) => map.get_mut(&key).unwrap(),
            Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
            _ => unreachable!("checked above"),
        };
    }
    cur
}

fn apply(doc: &mut Value, op: &Op, strings: &[String], numbers: &[Value]) {
    match op {
        Op::Set { path, value } => *node(doc, path) = value.value(strings, numbers),
        Op::Remove { path } => {
            let Some((last, parent)) = path.split_last() else {
                return;
            };
            match node(doc, parent) {
                Value::Object(map) if !map.is_empty() => {
                    let key = map
                        .keys()
                        .nth(usize::from(*last) % map.len())
                        .cloned()
                        .unwrap();
                    map.remove(&key);
                }
                Value::Array(items) if !items.is_empty() => {
                    items.remove(usize::from(*last) % items.len());
                }
                _ => {}
            }
        }
        Op::Insert { path, key, value } => match node(doc, path) {
            Value::Object(map) => {
                map.insert(
                    KEYS[usize::from(*key) % KEYS.len()].to_owned(),
                    value.value(strings, numbers),
                );
            }
            Value::Array(items) => items.push(value.value(strings, numbers)),
            _ => {}
        },
    }
}

/// The body bytes as a client sends them, parsed the way the API server does: by content type
/// to a JSON value, which must be an object.
fn parse_body(bytes: &[u8], yaml: bool) -> Option<Value> {
    let value: Value = if yaml {
        serde_norway::from_slice(bytes).ok()?
    } else {
        serde_json::from_slice(bytes).ok()?
    };
    value.is_object().then_some(value)
}

/// Every property for one document decoded as kind `S`.
fn check_kind<S: Spec + PartialEq>(doc: &Value, text: &str) {
    let from_json = Resource::<S>::from_json(doc.clone());
    // A YAML body goes to a JSON value first, as the API server reads it.
    let yaml_text = serde_norway::to_string(doc).expect("a JSON value encodes as YAML");
    let yaml_value: Value = serde_norway::from_str(&yaml_text)
        .unwrap_or_else(|e| panic!("YAML of a JSON value does not parse ({e}):\n{yaml_text}"));
    let from_yaml = Resource::<S>::from_json(yaml_value);
    // Decoding YAML straight into the type is looser (a plain scalar such as `name: 1` reads
    // as a string) but must not panic.
    let _ = Resource::<S>::from_yaml(&yaml_text);
    match (&from_json, &from_yaml) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "JSON and YAML decode differently:\n{text}"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "JSON and YAML disagree on whether this decodes:\n{text}\nYAML:\n{yaml_text}\nfrom JSON: {a:?}\nfrom YAML: {b:?}"
        ),
    }
    let Ok(resource) = from_json else {
        return;
    };
    match resource.validate() {
        Err(e) => {
            let named = ["apiVersion", "kind"].contains(&e.field.as_str())
                || e.field.starts_with("metadata.")
                || e.field.starts_with("spec.");
            assert!(
                named,
                "validation error does not name a field: {e:?}\n{text}"
            );
            assert!(!e.message.is_empty(), "empty validation message:\n{text}");
        }
        Ok(()) => {
            let encoded = resource.to_json();
            let again = Resource::<S>::from_json(encoded.clone())
                .unwrap_or_else(|e| panic!("re-decoding failed ({e}):\n{encoded}"));
            assert_eq!(again, resource, "decode → encode → decode changed it");
            assert_eq!(
                again.to_json(),
                encoded,
                "the JSON encoding is not a fixpoint"
            );
            again
                .validate()
                .unwrap_or_else(|e| panic!("valid, then invalid after a round trip ({e})"));
            let yaml = serde_norway::to_string(&resource).expect("encode YAML");
            let via_yaml = Resource::<S>::from_yaml(&yaml)
                .unwrap_or_else(|e| panic!("re-decoding YAML failed ({e}):\n{yaml}"));
            assert_eq!(via_yaml, resource, "YAML round trip changed it:\n{yaml}");
            let json_text = serde_json::to_string(&resource).expect("encode JSON");
            let json_as_yaml = Resource::<S>::from_yaml(&json_text)
                .unwrap_or_else(|e| panic!("JSON text is YAML, yet ({e}):\n{json_text}"));
            assert_eq!(json_as_yaml, resource, "JSON text read as YAML differs");
        }
    }
}

fn check_all_kinds(doc: &Value, text: &str) {
    check_kind::<EnvironmentSpec>(doc, text);
    check_kind::<PackageSpec>(doc, text);
    check_kind::<FunctionSpec>(doc, text);
    check_kind::<HttpTriggerSpec>(doc, text);
    check_kind::<MessageQueueTriggerSpec>(doc, text);
    check_kind::<TimeTriggerSpec>(doc, text);
    check_kind::<SecretSpec>(doc, text);
    check_kind::<ConfigMapSpec>(doc, text);
}

fn check_case(case: &Case, seeds: &[Value], strings: &[String], numbers: &[Value]) {
    let mut doc = seeds[usize::from(case.kind) % seeds.len()].clone();
    for op in case.ops.iter().take(6) {
        apply(&mut doc, op, strings, numbers);
    }
    let bytes = if case.yaml {
        serde_norway::to_string(&doc).unwrap().into_bytes()
    } else {
        serde_json::to_vec(&doc).unwrap()
    };
    let parsed = parse_body(&bytes, case.yaml);
    if doc.is_object() {
        let back = parsed.as_ref().unwrap_or_else(|| {
            panic!(
                "an encoded object does not parse back:\n{}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert_eq!(*back, doc, "the body parses to another document");
    }
    if let Some(parsed) = parsed {
        let text = serde_json::to_string_pretty(&parsed).unwrap();
        check_all_kinds(&parsed, &text);
    }
}

#[test]
fn seeds_are_valid_resources() {
    for seed in seeds() {
        let text = seed.to_string();
        macro_rules! valid {
            ($spec:ty) => {
                Resource::<$spec>::from_json(seed.clone())
                    .unwrap_or_else(|e| panic!("{e}: {text}"))
                    .validate()
                    .unwrap_or_else(|e| panic!("{e}: {text}"))
            };
        }
        match seed["kind"].as_str().unwrap() {
            "Environment" => valid!(EnvironmentSpec),
            "Package" => valid!(PackageSpec),
            "Function" => valid!(FunctionSpec),
            "HttpTrigger" => valid!(HttpTriggerSpec),
            "MessageQueueTrigger" => valid!(MessageQueueTriggerSpec),
            "TimeTrigger" => valid!(TimeTriggerSpec),
            "Secret" => valid!(SecretSpec),
            "ConfigMap" => valid!(ConfigMapSpec),
            other => panic!("no seed check for {other}"),
        }
    }
}

#[test]
fn mutated_resources_decode_consistently() {
    let seeds = seeds();
    let strings = strings();
    let numbers = numbers();
    check!()
        .with_type::<Case>()
        .with_test_time(TEST_TIME)
        .for_each(|case| check_case(case, &seeds, &strings, &numbers));
}

#[test]
fn raw_bytes_decode_without_panicking() {
    check!().with_test_time(TEST_TIME).for_each(|bytes: &[u8]| {
        for yaml in [false, true] {
            if let Some(value) = parse_body(bytes, yaml) {
                let text = serde_json::to_string_pretty(&value).unwrap();
                check_all_kinds(&value, &text);
            }
        }
    });
}
