//! Reading requests: query parameters, names in paths and resource bodies (JSON or YAML), each
//! failure an [`ApiError`] naming the parameter or field.

use axum::extract::rejection::BytesRejection;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri, header};
use kappa_types::{DEFAULT_NAMESPACE, Resource, Spec, validate};
use serde_json::Value;

use crate::error::ApiError;

/// The query parameters of one request, checked against the names a route accepts.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Parses the query of `uri`, refusing parameters not in `allowed` (a typo such as
    /// `?namespce=` must not silently fall back to the default namespace) and repeated ones.
    pub(crate) fn parse(uri: &Uri, allowed: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or(""))
            .map_err(|e| ApiError::malformed(format!("malformed query string: {e}")))?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::invalid(
                    name.clone(),
                    format!(
                        "unknown query parameter {name:?}: expected {}",
                        if allowed.is_empty() {
                            "none".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                ));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::invalid(
                    name.clone(),
                    format!("query parameter {name:?} is repeated"),
                ));
            }
        }
        Ok(Params(pairs))
    }

    /// The raw value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `true`/`false` (absent: `false`).
    pub(crate) fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") | Some("") => Ok(true),
            Some(other) => Err(ApiError::invalid(
                name,
                format!("{other:?} is not a boolean: expected true or false"),
            )),
        }
    }

    /// A non-negative integer.
    pub(crate) fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::invalid(name, format!("{v:?} is not a non-negative integer"))
                })
            })
            .transpose()
    }

    /// The `namespace` parameter, validated, if given.
    pub(crate) fn explicit_namespace(&self) -> Result<Option<String>, ApiError> {
        match self.get("namespace") {
            None => Ok(None),
            Some(ns) => {
                validate::dns1123_label("namespace", ns)?;
                Ok(Some(ns.to_string()))
            }
        }
    }

    /// The `namespace` parameter, or `default`.
    pub(crate) fn namespace(&self) -> Result<String, ApiError> {
        Ok(self
            .explicit_namespace()?
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()))
    }
}

/// Checks a resource name taken from the URL path.
pub(crate) fn path_name(name: &str) -> Result<(), ApiError> {
    validate::dns1123_label("name", name)?;
    Ok(())
}

/// The formats a resource body may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let unsupported = |got: &str| {
        ApiError::UnsupportedMediaType(format!(
            "content type {got:?} is not supported: expected application/json or application/yaml"
        ))
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(
            "missing Content-Type: expected application/json or application/yaml".into(),
        ));
    };
    let text = value.to_str().map_err(|_| unsupported("<not text>"))?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Ok(Format::Yaml),
        _ => Err(unsupported(text)),
    }
}

/// Turns the outcome of axum's `Bytes` extractor into the body or an [`ApiError`] (413 when the
/// body limit cut it).
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "request body is larger than {} bytes",
                crate::RESOURCE_BODY_LIMIT
            ))
        } else {
            ApiError::malformed(format!(
                "reading the request body failed: {}",
                rejection.body_text()
            ))
        }
    })
}

/// Parses a body as JSON or YAML (by `Content-Type`) into a JSON object.
pub(crate) fn body_object(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let format = format_of(headers)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::malformed(
            "request body is empty: expected a resource",
        ));
    }
    let value: Value = match format {
        Format::Json => serde_json::from_slice(body)
            .map_err(|e| ApiError::malformed(format!("malformed JSON: {e}")))?,
        Format::Yaml => serde_norway::from_slice(body)
            .map_err(|e| ApiError::malformed(format!("malformed YAML: {e}")))?,
    };
    if !value.is_object() {
        return Err(ApiError::malformed("expected an object"));
    }
    Ok(value)
}

/// Settles the namespace of a resource body: the `?namespace=` parameter when given (the body
/// must then agree or say nothing), else the body's, else `default`. Writes it into
/// `metadata.namespace` and returns it.
pub(crate) fn settle_namespace(
    value: &mut Value,
    query_ns: Option<&str>,
) -> Result<String, ApiError> {
    let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) else {
        // No metadata object: typed parsing names the problem.
        return Ok(query_ns.unwrap_or(DEFAULT_NAMESPACE).to_string());
    };
    match (meta.get("namespace"), query_ns) {
        (Some(Value::String(body_ns)), Some(q)) if body_ns != q => Err(ApiError::invalid(
            "metadata.namespace",
            format!("namespace {body_ns:?} in the body does not match {q:?} in the request"),
        )),
        (Some(Value::String(body_ns)), _) => Ok(body_ns.clone()),
        (None, q) => {
            let ns = q.unwrap_or(DEFAULT_NAMESPACE).to_string();
            meta.insert("namespace".into(), Value::String(ns.clone()));
            Ok(ns)
        }
        // Not a string: typed parsing names the problem.
        (Some(_), q) => Ok(q.unwrap_or(DEFAULT_NAMESPACE).to_string()),
    }
}

/// Gives references that name no namespace (`{"name": "python"}`) the referrer's namespace,
/// which is what a reference without one means. `pointers` are JSON pointers to reference
/// objects; a pointer ending in `/*` means every element of that array.
pub(crate) fn default_reference_namespaces(value: &mut Value, pointers: &[&str], namespace: &str) {
    for pointer in pointers {
        let targets: Vec<&mut Value> = match pointer.strip_suffix("/*") {
            Some(array) => match value.pointer_mut(array) {
                Some(Value::Array(items)) => items.iter_mut().collect(),
                _ => Vec::new(),
            },
            None => value.pointer_mut(pointer).into_iter().collect(),
        };
        for target in targets {
            if let Some(obj) = target.as_object_mut() {
                obj.entry("namespace")
                    .or_insert_with(|| Value::String(namespace.to_string()));
            }
        }
    }
}

/// Parses a JSON object into a typed resource, naming the offending field by its dotted path
/// (`spec.poolsize`, `spec.poolsiz` for an unknown field, `spec` for a missing one).
pub(crate) fn typed<S: Spec>(value: Value) -> Result<Resource<S>, ApiError> {
    serde_path_to_error::deserialize::<_, Resource<S>>(value).map_err(|e| {
        let message = e.inner().to_string();
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let field = match backticked(&message) {
            // "unknown field `x`" / "missing field `x`": the path is the enclosing object.
            Some(name)
                if message.starts_with("unknown field") || message.starts_with("missing field") =>
            {
                if path.is_empty() || path.ends_with(&format!(".{name}")) || path == name {
                    if path.is_empty() { name } else { path }
                } else {
                    format!("{path}.{name}")
                }
            }
            _ => path,
        };
        if field.is_empty() {
            ApiError::malformed(message)
        } else {
            ApiError::invalid(field, message)
        }
    })
}

fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use kappa_types::EnvironmentSpec;
    use serde_json::json;

    use super::*;

    #[test]
    fn params_refuse_unknown_and_bad_values() {
        let uri: Uri = "/v1/functions?namespce=x".parse().unwrap();
        let e = Params::parse(&uri, &["namespace"]).unwrap_err();
        assert_eq!(e.field(), Some("namespce"));
        let uri: Uri = "/v1/functions?namespace=Bad_NS".parse().unwrap();
        let p = Params::parse(&uri, &["namespace"]).unwrap();
        assert_eq!(p.namespace().unwrap_err().field(), Some("namespace"));
        let uri: Uri = "/x?force=yes&tail=-1".parse().unwrap();
        let p = Params::parse(&uri, &["force", "tail"]).unwrap();
        assert_eq!(p.flag("force").unwrap_err().field(), Some("force"));
        assert_eq!(p.number("tail").unwrap_err().field(), Some("tail"));
    }

    #[test]
    fn typed_errors_name_dotted_paths() {
        let e = typed::<EnvironmentSpec>(
            json!({"metadata": {"name": "x"}, "spec": {"runtime": {"image": "p"}, "poolsiz": 1}}),
        )
        .unwrap_err();
        assert_eq!(e.field(), Some("spec.poolsiz"), "{e:?}");
        let e = typed::<EnvironmentSpec>(json!({"metadata": {"name": "x"}, "spec": {"runtime": {"image": "p"}, "poolsize": "big"}}))
            .unwrap_err();
        assert_eq!(e.field(), Some("spec.poolsize"), "{e:?}");
        let e = typed::<EnvironmentSpec>(json!({"metadata": {"name": "x"}})).unwrap_err();
        assert_eq!(e.field(), Some("spec"), "{e:?}");
        let e =
            typed::<EnvironmentSpec>(json!({"metadata": {"name": "x"}, "spec": {}})).unwrap_err();
        assert_eq!(e.field(), Some("spec.runtime"), "{e:?}");
        let e = typed::<EnvironmentSpec>(
            json!({"metadata": {"name": "x", "extra": 1}, "spec": {"runtime": {}}}),
        )
        .unwrap_err();
        assert_eq!(e.field(), Some("metadata.extra"), "{e:?}");
        let e = typed::<EnvironmentSpec>(
            json!({"metadata": {"name": "x"}, "spec": {"runtime": {}}, "bogus": 1}),
        )
        .unwrap_err();
        assert_eq!(e.field(), Some("bogus"), "{e:?}");
    }

    #[test]
    fn namespaces_settle() {
        let mut v = json!({"metadata": {"name": "x"}});
        assert_eq!(settle_namespace(&mut v, None).unwrap(), "default");
        assert_eq!(v["metadata"]["namespace"], "default");
        let mut v = json!({"metadata": {"name": "x", "namespace": "prod"}});
        assert_eq!(settle_namespace(&mut v, None).unwrap(), "prod");
        assert_eq!(
            settle_namespace(&mut v, Some("dev")).unwrap_err().field(),
            Some("metadata.namespace")
        );
        let mut v = json!({"spec": {"environment": {"name": "py"}, "secrets": [{"name": "a"}, {"name": "b", "namespace": "z"}]}});
        default_reference_namespaces(
            &mut v,
            &["/spec/environment", "/spec/secrets/*", "/spec/missing"],
            "prod",
        );
        assert_eq!(v["spec"]["environment"]["namespace"], "prod");
        assert_eq!(v["spec"]["secrets"][0]["namespace"], "prod");
        assert_eq!(v["spec"]["secrets"][1]["namespace"], "z");
    }
}
