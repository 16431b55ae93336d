//! Fission → Kappa: converts a `fission.io/v1` document (Environment, Package, Function,
//! HTTPTrigger, MessageQueueTrigger, TimeTrigger) into the JSON of Kappa's resource, field by
//! field. Every Fission field is read explicitly: it is mapped, accepted at its zero value,
//! ignored with a warning where ignoring it changes nothing a user relies on, or refused with
//! an error naming it. Whatever is left unread is an error too (see [`Fields::finish`]); the
//! table in `docs/fission.md` lists each field's fate. Kinds Kappa has no equivalent for
//! (KubernetesWatchTrigger, ...) are refused.
//!
//! The other direction is not needed: Kappa writes its own format (`--spec` on create commands).

use kappa_types::Kind;
use serde_json::{Map, Value, json};

use super::load::{Document, Fields, Problem};

/// The `(field, ArchiveUploadSpec name)` of every `archive://NAME` archive of a Package.
pub type Uploads = Vec<(&'static str, String)>;

/// Reads the `spec` of one Fission kind into Kappa's.
type SpecReader = fn(&mut Fields<'_>, &mut Map<String, Value>) -> Uploads;

/// A converted document: Kappa's kind, its JSON, the `archive://NAME` archives it names, and
/// warnings.
pub struct Converted {
    pub object: Option<(Kind, Value, Uploads)>,
    pub warnings: Vec<Problem>,
}

/// Converts one Fission document.
pub fn convert(value: &Value, doc: &Document) -> Result<Converted, Vec<Problem>> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut top = Fields::new(doc, value);
    top.take("apiVersion");
    top.take("kind");
    let (kappa_kind, spec_fn): (Kind, SpecReader) = match kind {
        "Environment" => (Kind::Environment, environment),
        "Package" => (Kind::Package, package),
        "Function" => (Kind::Function, function),
        "HTTPTrigger" => (Kind::HttpTrigger, http_trigger),
        "MessageQueueTrigger" => (Kind::MessageQueueTrigger, mq_trigger),
        "TimeTrigger" => (Kind::TimeTrigger, time_trigger),
        "CanaryConfig" => (Kind::CanaryConfig, canary_config),
        "KubernetesWatchTrigger" => {
            return Err(refuse(
                doc,
                "kind KubernetesWatchTrigger is not supported: Kappa has no Kubernetes watch triggers",
            ));
        }
        other => {
            return Err(refuse(
                doc,
                &format!(
                    "kind {other:?} of fission.io/v1 is not supported: expected Environment, Package, Function, HTTPTrigger, MessageQueueTrigger, TimeTrigger, CanaryConfig, ArchiveUploadSpec or DeploymentConfig"
                ),
            ));
        }
    };
    let metadata = metadata(&mut top);
    // `status` is written by Fission's `--spec` (e.g. a Package's buildstatus); Fission's own
    // apply ignores it, and so does Kappa (the platform owns status).
    top.take("status");
    let spec_value = top.take("spec").unwrap_or(Value::Null);
    let mut spec_fields = Fields::at(doc, "spec", &spec_value);
    let mut spec = Map::new();
    let uploads = spec_fn(&mut spec_fields, &mut spec);
    let mut problems = top.finish();
    problems.extend(spec_fields.finish());
    if problems.iter().any(|p| !p.warning) {
        return Err(problems);
    }
    let mut object = json!({
        "apiVersion": kappa_types::API_VERSION,
        "kind": kappa_kind.as_str(),
        "metadata": metadata,
        "spec": Value::Object(spec),
    });
    if object["metadata"].is_null() {
        object["metadata"] = json!({});
    }
    Ok(Converted {
        object: Some((kappa_kind, object, uploads)),
        warnings: problems,
    })
}

fn refuse(doc: &Document, message: &str) -> Vec<Problem> {
    vec![Problem {
        at: doc.locate("kind"),
        message: message.to_string(),
        warning: false,
    }]
}

/// Where a Kappa field path of a converted object is in the Fission document.
pub fn fission_path(kind: Kind, kappa: &str) -> String {
    let exec = "spec.InvokeStrategy.ExecutionStrategy";
    match (kind, kappa) {
        (Kind::Function, "spec.executorType") => format!("{exec}.ExecutorType"),
        (Kind::Function, "spec.minScale") => format!("{exec}.MinScale"),
        (Kind::Function, "spec.maxScale") => format!("{exec}.MaxScale"),
        (Kind::Function, "spec.specializationTimeout") => {
            format!("{exec}.SpecializationTimeout")
        }
        _ => kappa.to_string(),
    }
}

fn metadata(top: &mut Fields<'_>) -> Value {
    let value = top.take("metadata").unwrap_or(Value::Null);
    let mut m = Fields::at(top.doc(), "metadata", &value);
    let mut out = Map::new();
    if let Some(name) = m.string("name") {
        out.insert("name".into(), json!(name));
    } else {
        m.error("name", "missing");
    }
    if let Some(ns) = m.string("namespace").filter(|n| !n.is_empty()) {
        out.insert("namespace".into(), json!(ns));
    }
    for key in ["labels", "annotations"] {
        if let Some(v) = m.take(key) {
            match serde_json::from_value::<std::collections::BTreeMap<String, String>>(v) {
                Ok(map) => {
                    out.insert(key.into(), json!(map));
                }
                Err(_) => m.error(key, "expected a mapping of strings"),
            }
        }
    }
    // Written as `creationTimestamp: null` by `fission ... --spec`; set by the platform.
    m.take("creationTimestamp");
    for key in ["uid", "resourceVersion", "generation"] {
        m.ignored(key, "the platform sets it");
    }
    top.problems.extend(m.finish());
    Value::Object(out)
}

/// `{name, namespace}`.
fn named_ref(f: &mut Fields<'_>, key: &str) -> Option<Value> {
    let value = f.take(key)?;
    let mut r = Fields::at(f.doc(), &f.path(key), &value);
    let mut out = Map::new();
    match r.string("name") {
        Some(n) => {
            out.insert("name".into(), json!(n));
        }
        None => r.error("name", "missing"),
    }
    if let Some(ns) = r.string("namespace").filter(|n| !n.is_empty()) {
        out.insert("namespace".into(), json!(ns));
    }
    f.problems.extend(r.finish());
    Some(Value::Object(out))
}

/// Kubernetes `ResourceRequirements` → Kappa `resources` (cpu and memory).
fn resources(f: &mut Fields<'_>, spec: &mut Map<String, Value>) {
    let Some(value) = f.take("resources") else {
        return;
    };
    let mut r = Fields::at(f.doc(), &f.path("resources"), &value);
    let mut out = Map::new();
    for key in ["requests", "limits"] {
        let Some(list) = r.take(key) else { continue };
        let mut l = Fields::at(r.doc(), &r.path(key), &list);
        let mut o = Map::new();
        for q in ["cpu", "memory"] {
            if let Some(v) = l.take(q) {
                match v {
                    Value::String(s) => {
                        o.insert(q.into(), json!(s));
                    }
                    Value::Number(n) => {
                        o.insert(q.into(), json!(n.to_string()));
                    }
                    _ => l.error(q, "expected a quantity such as \"500m\" or \"128Mi\""),
                }
            }
        }
        r.problems.extend(l.finish());
        if !o.is_empty() {
            out.insert(key.into(), Value::Object(o));
        }
    }
    r.zero_only("claims", "Kappa has no resource claims");
    f.problems.extend(r.finish());
    if !out.is_empty() {
        spec.insert("resources".into(), Value::Object(out));
    }
}

fn environment(f: &mut Fields<'_>, spec: &mut Map<String, Value>) -> Uploads {
    if let Some(v) = f.u64("version") {
        if v == 1 {
            f.error(
                "version",
                "1 (the single-file `/specialize` protocol) is not supported: Kappa speaks the v2 protocol (`/v2/specialize`); use version 2 or 3",
            );
        } else {
            spec.insert("version".into(), json!(v));
        }
    }
    if let Some(rt) = f.take("runtime") {
        let mut r = Fields::at(f.doc(), "spec.runtime", &rt);
        let mut out = Map::new();
        out.insert("image".into(), json!(r.string("image").unwrap_or_default()));
        r.zero_only(
            "container",
            "Kappa does not merge a container patch into the runtime (set resources on the environment instead)",
        );
        r.zero_only(
            "podspec",
            "Kappa does not merge a pod spec into the runtime's pods",
        );
        f.problems.extend(r.finish());
        spec.insert("runtime".into(), Value::Object(out));
    } else {
        f.error("runtime", "missing: expected runtime.image");
    }
    if let Some(b) = f.take("builder") {
        let mut r = Fields::at(f.doc(), "spec.builder", &b);
        let image = r.string("image").unwrap_or_default();
        let command = r.string("command").unwrap_or_default();
        r.zero_only(
            "container",
            "Kappa does not merge a container patch into the builder",
        );
        r.zero_only(
            "podspec",
            "Kappa does not merge a pod spec into the builder",
        );
        f.problems.extend(r.finish());
        if !image.is_empty() || !command.is_empty() {
            spec.insert(
                "builder".into(),
                json!({"image": image, "command": command}),
            );
        }
    }
    if let Some(n) = f.u64("poolsize") {
        spec.insert("poolsize".into(), json!(n));
    }
    resources(f, spec);
    if let Some(n) = f.u64("terminationGracePeriod") {
        spec.insert("terminationGracePeriod".into(), json!(n));
    }
    if let Some(b) = f.bool("keeparchive") {
        spec.insert("keeparchive".into(), json!(b));
    }
    f.zero_only(
        "imagepullsecret",
        "Kappa sets no image pull secret on its pods (make the image pullable by the nodes)",
    );
    if let Some(mode) = f.string("allowedFunctionsPerContainer")
        && !matches!(mode.as_str(), "" | "single")
    {
        f.error(
            "allowedFunctionsPerContainer",
            format!(
                "{mode:?} is not supported: Kappa loads one function per instance (\"single\")"
            ),
        );
    }
    f.ignored(
        "allowAccessToExternalNetwork",
        "it only configures Fission's Istio egress; Kappa has no Istio mode",
    );
    Vec::new()
}

/// A Fission `Archive` → Kappa's, or `archive://NAME` (returned as the upload name).
fn archive(
    f: &mut Fields<'_>,
    key: &'static str,
    spec: &mut Map<String, Value>,
    uploads: &mut Uploads,
) {
    let Some(value) = f.take(key) else { return };
    let mut a = Fields::at(f.doc(), &f.path(key), &value);
    let kind = a.string("type").unwrap_or_default();
    let literal = a.string("literal").filter(|s| !s.is_empty());
    let url = a.string("url").filter(|s| !s.is_empty());
    let checksum = a.take("checksum");
    a.zero_only("oci", "Kappa has no OCI package delivery");
    let field: &'static str = if key == "source" {
        "spec.source"
    } else {
        "spec.deployment"
    };
    match (kind.as_str(), literal, url) {
        ("" | "literal" | "url", None, None) => {}
        ("" | "literal", Some(literal), None) => {
            // Fission's literal is `[]byte`, which is base64 in YAML, as Kappa's.
            let mut out = json!({"type": "literal", "literal": literal});
            if let Some(c) = checksum.filter(|c| !super::load::is_zero(c)) {
                out["checksum"] = c;
            }
            spec.insert(key.into(), out);
        }
        ("" | "url", None, Some(url)) => match url.strip_prefix("archive://") {
            Some(name) if !name.starts_with("sha256/") => {
                uploads.push((field, name.to_string()));
                spec.insert(key.into(), json!({"type": "url", "url": url}));
            }
            _ => {
                let mut out = json!({"type": "url", "url": url});
                if let Some(c) = checksum.filter(|c| !super::load::is_zero(c)) {
                    out["checksum"] = c;
                }
                spec.insert(key.into(), out);
            }
        },
        (other, _, _) => a.error(
            "type",
            format!("{other:?} with these fields is not supported: expected literal (with `literal`) or url (with `url`)"),
        ),
    }
    f.problems.extend(a.finish());
}

fn package(f: &mut Fields<'_>, spec: &mut Map<String, Value>) -> Uploads {
    let mut uploads = Vec::new();
    match named_ref(f, "environment") {
        Some(env) => {
            spec.insert("environment".into(), env);
        }
        None => f.error("environment", "missing"),
    }
    archive(f, "source", spec, &mut uploads);
    archive(f, "deployment", spec, &mut uploads);
    if let Some(cmd) = f.string("buildcmd").filter(|c| !c.is_empty()) {
        spec.insert("buildcmd".into(), json!(cmd));
    }
    uploads
}

fn function(f: &mut Fields<'_>, spec: &mut Map<String, Value>) -> Uploads {
    match named_ref(f, "environment") {
        Some(env) => {
            spec.insert("environment".into(), env);
        }
        None => f.error("environment", "missing"),
    }
    if let Some(pkg) = f.take("package") {
        let mut p = Fields::at(f.doc(), "spec.package", &pkg);
        let function_name = p.string("functionName").unwrap_or_default();
        let pref = p.take("packageref").unwrap_or(Value::Null);
        let mut r = Fields::at(p.doc(), "spec.package.packageref", &pref);
        let name = r.string("name").unwrap_or_default();
        if name.is_empty() {
            r.error("name", "missing");
        }
        let namespace = r.string("namespace").filter(|n| !n.is_empty());
        // Fission pins it to force an update; Kappa's apply pins it itself.
        r.take("resourceversion");
        p.problems.extend(r.finish());
        f.problems.extend(p.finish());
        let mut packageref = json!({"name": name});
        if let Some(ns) = namespace {
            packageref["namespace"] = json!(ns);
        }
        spec.insert(
            "package".into(),
            json!({"packageref": packageref, "functionName": function_name}),
        );
    } else {
        f.error(
            "package",
            "missing: expected package.packageref and package.functionName",
        );
    }
    for key in ["secrets", "configmaps"] {
        let Some(list) = f.take(key) else { continue };
        let Value::Array(items) = list else {
            f.error(key, "expected a list of {name, namespace}");
            continue;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let mut r = Fields::at(f.doc(), &format!("spec.{key}[{i}]"), item);
            let name = r.string("name").unwrap_or_default();
            let ns = r.string("namespace").filter(|n| !n.is_empty());
            r.zero_only(
                "mountPath",
                "Kappa places them at /secrets and /configs only",
            );
            f.problems.extend(r.finish());
            let mut v = json!({"name": name});
            if let Some(ns) = ns {
                v["namespace"] = json!(ns);
            }
            out.push(v);
        }
        spec.insert(key.into(), Value::Array(out));
    }
    resources(f, spec);
    let mut executor = "poolmgr".to_string();
    if let Some(inv) = f.take("InvokeStrategy") {
        let mut s = Fields::at(f.doc(), "spec.InvokeStrategy", &inv);
        if let Some(t) = s.string("StrategyType")
            && !matches!(t.as_str(), "" | "execution")
        {
            s.error(
                "StrategyType",
                format!("{t:?} is not supported: expected execution"),
            );
        }
        let exec = s.take("ExecutionStrategy").unwrap_or(Value::Null);
        let mut e = Fields::at(s.doc(), "spec.InvokeStrategy.ExecutionStrategy", &exec);
        if let Some(t) = e.string("ExecutorType").filter(|t| !t.is_empty()) {
            match t.as_str() {
                "poolmgr" | "newdeploy" => executor = t,
                other => e.error(
                    "ExecutorType",
                    format!("{other:?} is not supported: expected poolmgr or newdeploy (Kappa has no container executor)"),
                ),
            }
        }
        spec.insert("executorType".into(), json!(executor));
        if let Some(n) = e.u64("MinScale") {
            spec.insert("minScale".into(), json!(n));
        }
        // Fission writes 0 for "unset"; Kappa's default (1) stands then.
        if let Some(n) = e.u64("MaxScale").filter(|n| *n > 0) {
            spec.insert("maxScale".into(), json!(n));
        }
        if let Some(n) = e.u64("SpecializationTimeout").filter(|n| *n > 0) {
            spec.insert("specializationTimeout".into(), json!(n));
        }
        e.ignored(
            "TargetCPUPercent",
            "Kappa scales newdeploy functions on in-flight requests, not CPU",
        );
        e.zero_only("hpaMetrics", "Kappa creates no HorizontalPodAutoscaler");
        e.zero_only("hpaBehavior", "Kappa creates no HorizontalPodAutoscaler");
        s.problems.extend(e.finish());
        f.problems.extend(s.finish());
    }
    for (fission, kappa) in [
        ("functionTimeout", "functionTimeout"),
        ("idletimeout", "idletimeout"),
        ("concurrency", "concurrency"),
        ("requestsPerPod", "requestsPerPod"),
    ] {
        // 0 is Fission's "unset": Kappa's default stands.
        if let Some(n) = f.u64(fission).filter(|n| *n > 0) {
            spec.insert(kappa.into(), json!(n));
        }
    }
    if let Some(n) = f.u64("retainPods").filter(|n| *n > 0) {
        if executor == "poolmgr" && !spec.contains_key("minScale") {
            // Both keep that many specialized instances from idle reaping.
            spec.insert("minScale".into(), json!(n));
        } else {
            f.error(
                "retainPods",
                "is only supported for poolmgr functions without MinScale (it becomes minScale)",
            );
        }
    }
    f.zero_only("onceOnly", "Kappa reuses an instance for later requests");
    f.zero_only("podspec", "Kappa has no container executor");
    f.zero_only(
        "envFrom",
        "set the variables in `env`, or use secrets and configmaps",
    );
    if let Some(env) = f.take("env") {
        let Value::Array(items) = env else {
            f.error("env", "expected a list of {name, value}");
            return Vec::new();
        };
        let mut out = Map::new();
        for (i, item) in items.iter().enumerate() {
            let mut r = Fields::at(f.doc(), &format!("spec.env[{i}]"), item);
            let name = r.string("name").unwrap_or_default();
            let value = r.string("value").unwrap_or_default();
            r.zero_only("valueFrom", "use secrets and configmaps, read from files");
            f.problems.extend(r.finish());
            out.insert(name, json!(value));
        }
        spec.insert("env".into(), Value::Object(out));
    }
    Vec::new()
}

fn functionref(f: &mut Fields<'_>, spec: &mut Map<String, Value>, weights_allowed: bool) {
    let Some(value) = f.take("functionref") else {
        f.error("functionref", "missing");
        return;
    };
    let mut r = Fields::at(f.doc(), "spec.functionref", &value);
    let kind = r.string("type").unwrap_or_else(|| "name".into());
    let name = r.string("name").unwrap_or_default();
    let weights = r.take("functionweights");
    for (key, why) in [
        ("alias", "Kappa has no function aliases"),
        ("version", "Kappa has no function versions"),
    ] {
        r.zero_only(key, why);
    }
    let mut out = json!({"type": kind, "name": name});
    match kind.as_str() {
        "name" => {}
        "function-weights" if weights_allowed => {
            out["functionweights"] = weights.unwrap_or(Value::Null);
        }
        other => r.error(
            "type",
            format!(
                "{other:?} is not supported here: expected {}",
                if weights_allowed {
                    "name or function-weights"
                } else {
                    "name"
                }
            ),
        ),
    }
    f.problems.extend(r.finish());
    spec.insert("functionref".into(), out);
}

fn http_trigger(f: &mut Fields<'_>, spec: &mut Map<String, Value>) -> Uploads {
    if let Some(h) = f.string("host").filter(|h| !h.is_empty()) {
        spec.insert("host".into(), json!(h));
    }
    if let Some(u) = f.string("relativeurl").filter(|u| !u.is_empty()) {
        spec.insert("relativeurl".into(), json!(u));
    }
    if let Some(p) = f.string("prefix").filter(|p| !p.is_empty()) {
        spec.insert("prefix".into(), json!(p));
    }
    if let Some(k) = f.bool("keepPrefix") {
        spec.insert("keepPrefix".into(), json!(k));
    }
    let mut methods = f.strings("methods");
    if let Some(m) = f.string("method").filter(|m| !m.is_empty())
        && methods.is_empty()
    {
        methods.push(m);
    }
    spec.insert("methods".into(), json!(methods));
    functionref(f, spec, true);
    let ingress = f.bool("createingress").unwrap_or(false);
    if ingress {
        f.error(
            "createingress",
            "is not supported: Kappa creates no Ingress; expose the router's Service instead",
        );
    }
    // Only read by Fission when createingress is true (refused above).
    f.take("ingressconfig");
    for (key, why) in [
        ("routeConfig", "Kappa creates no Ingress or Gateway route"),
        ("corsConfig", "Kappa's router adds no CORS headers"),
        ("invocationMode", "Kappa invokes synchronously"),
    ] {
        f.zero_only(key, why);
    }
    Vec::new()
}

fn mq_trigger(f: &mut Fields<'_>, spec: &mut Map<String, Value>) -> Uploads {
    functionref(f, spec, false);
    // Kappa's own validation names the supported types.
    match f.string("messageQueueType") {
        Some(t) => {
            spec.insert("messageQueueType".into(), json!(t));
        }
        None => f.error("messageQueueType", "missing"),
    }
    for key in ["topic", "respTopic", "errorTopic", "contentType"] {
        if let Some(s) = f.string(key).filter(|s| !s.is_empty()) {
            spec.insert(key.into(), json!(s));
        }
    }
    if let Some(n) = f.u64("maxRetries") {
        spec.insert("maxRetries".into(), json!(n));
    }
    if let Some(m) = f.take("metadata") {
        match serde_json::from_value::<std::collections::BTreeMap<String, String>>(m) {
            Ok(map) if !map.is_empty() => {
                spec.insert("metadata".into(), json!(map));
            }
            Ok(_) => {}
            Err(_) => f.error("metadata", "expected a mapping of strings"),
        }
    }
    if let Some(s) = f.string("secret").filter(|s| !s.is_empty()) {
        spec.insert("secret".into(), json!(s));
    }
    // KEDA scaling of Fission's connector pods; Kappa runs its consumers in its trigger workers.
    // Fission's CLI writes its defaults (30, 300, 0, 100); only other values are worth a word.
    for (key, default) in [
        ("pollingInterval", 30),
        ("cooldownPeriod", 300),
        ("minReplicaCount", 0),
        ("maxReplicaCount", 100),
    ] {
        if let Some(v) = f.take(key)
            && v.as_u64() != Some(default)
            && !super::load::is_zero(&v)
        {
            f.warn(
                key,
                "ignored: it scales Fission's KEDA connector pods; Kappa consumes in its own trigger workers (maxConcurrency bounds the parallelism)",
            );
        }
    }
    if let Some(kind) = f.string("mqtkind")
        && !matches!(kind.as_str(), "" | "keda" | "fission")
    {
        f.error(
            "mqtkind",
            format!("{kind:?} is not a Fission mqtkind: expected keda or fission"),
        );
    }
    f.zero_only("podspec", "Kappa runs no connector pods");
    Vec::new()
}

fn time_trigger(f: &mut Fields<'_>, spec: &mut Map<String, Value>) -> Uploads {
    match f.string("cron") {
        Some(c) => {
            spec.insert("cron".into(), json!(c));
        }
        None => f.error("cron", "missing"),
    }
    functionref(f, spec, false);
    if let Some(m) = f.string("method").filter(|m| !m.is_empty()) {
        spec.insert("method".into(), json!(m));
    }
    if let Some(s) = f.string("subpath").filter(|s| !s.is_empty()) {
        spec.insert("subpath".into(), json!(s));
    }
    Vec::new()
}

/// Fission's CanaryConfig: the same fields (Kappa kept Fission's names, `duration` included).
fn canary_config(f: &mut Fields<'_>, spec: &mut Map<String, Value>) -> Uploads {
    for key in ["trigger", "newfunction", "oldfunction"] {
        match f.string(key) {
            Some(v) => {
                spec.insert(key.into(), json!(v));
            }
            None => f.error(key, "missing"),
        }
    }
    for key in ["weightincrement", "failurethreshold"] {
        if let Some(n) = f.u64(key) {
            spec.insert(key.into(), json!(n));
        }
    }
    if let Some(d) = f.string("duration").filter(|d| !d.is_empty()) {
        spec.insert("duration".into(), json!(d));
    }
    if let Some(t) = f.string("failureType").filter(|t| !t.is_empty()) {
        spec.insert("failureType".into(), json!(t));
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::spec::load::split_documents;

    fn convert_text(text: &str) -> Result<Converted, Vec<Problem>> {
        let doc = split_documents(Path::new("f.yaml"), text).remove(0);
        let value: Value = serde_norway::from_str(&doc.text).unwrap();
        convert(&value, &doc)
    }

    #[test]
    fn canary_configs_convert() {
        let c = convert_text(
            "apiVersion: fission.io/v1\nkind: CanaryConfig\nmetadata:\n  name: c\nspec:\n  trigger: r\n  newfunction: f-v2\n  oldfunction: f-v1\n  weightincrement: 25\n  duration: 1m\n  failurethreshold: 5\n  failureType: status-code\n",
        )
        .ok()
        .unwrap();
        let (kind, value, _) = c.object.unwrap();
        assert_eq!(kind, Kind::CanaryConfig);
        assert_eq!(value["spec"]["weightincrement"], 25);
        assert_eq!(value["spec"]["duration"], "1m");
        assert_eq!(value["spec"]["failureType"], "status-code");
    }

    #[test]
    fn functions_map_fission_defaults_and_spellings() {
        let c = convert_text(
            "apiVersion: fission.io/v1\nkind: Function\nmetadata:\n  name: f\nspec:\n  Concurrency: 50\n  environment:\n    name: python\n  package:\n    packageref:\n      name: p\n  retainPods: 2\n  functionTimeout: 0\n  InvokeStrategy:\n    ExecutionStrategy:\n      ExecutorType: poolmgr\n      MaxScale: 0\n",
        )
        .ok()
        .unwrap();
        let (kind, value, _) = c.object.unwrap();
        assert_eq!(kind, Kind::Function);
        assert_eq!(value["spec"]["concurrency"], 50);
        assert_eq!(value["spec"]["minScale"], 2);
        assert!(value["spec"].get("functionTimeout").is_none());
        assert!(value["spec"].get("maxScale").is_none());
    }

    #[test]
    fn triggers_take_the_deprecated_method_and_refuse_ingress() {
        let c = convert_text(
            "apiVersion: fission.io/v1\nkind: HTTPTrigger\nmetadata:\n  name: r\nspec:\n  method: POST\n  relativeurl: /x\n  functionref:\n    name: f\n    type: name\n",
        )
        .ok()
        .unwrap();
        assert_eq!(c.object.unwrap().1["spec"]["methods"], json!(["POST"]));
        let problems = convert_text(
            "apiVersion: fission.io/v1\nkind: HTTPTrigger\nmetadata:\n  name: r\nspec:\n  relativeurl: /x\n  createingress: true\n  functionref:\n    name: f\n",
        )
        .err()
        .unwrap();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .message
                .starts_with("spec.createingress: is not supported"),
            "{problems:?}"
        );
        assert_eq!(problems[0].at.line, 7);
    }

    #[test]
    fn archive_urls_name_uploads() {
        let c = convert_text(
            "apiVersion: fission.io/v1\nkind: Package\nmetadata:\n  name: p\nspec:\n  environment:\n    name: python\n  source:\n    checksum: {}\n  deployment:\n    type: url\n    url: archive://code\n    checksum: {}\n",
        )
        .ok()
        .unwrap();
        let (_, value, uploads) = c.object.unwrap();
        assert_eq!(uploads, vec![("spec.deployment", "code".to_string())]);
        assert!(value["spec"].get("source").is_none());
    }
}
